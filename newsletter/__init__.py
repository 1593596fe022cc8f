"""newsletter: write issues as YAML, validate, render, preview and send them."""

__version__ = "0.1.0"
