"""HTTP: the public site (`newsletter serve`) and the local preview server."""
