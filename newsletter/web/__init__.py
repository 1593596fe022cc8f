"""HTTP: the public site (`newsletter serve`: app, site, archive, security, pages,
confirmation) and the local preview server (preview, preview_live, preview_snapshot).
See docs/web.md."""
