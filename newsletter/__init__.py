"""newsletter: write issues as YAML, validate, render, preview and send them.

The library API (the CLI is a thin layer over it; see README "Python API"):

    import newsletter
    project = newsletter.open_project("path/to/project")
    issue = project.issue("issues/2026-02.yaml")
"""

from newsletter.errors import NewsletterError
from newsletter.project import IssuePipeline, Project, open_project

__version__ = "0.1.0"

__all__ = ["IssuePipeline", "NewsletterError", "Project", "__version__", "open_project"]
