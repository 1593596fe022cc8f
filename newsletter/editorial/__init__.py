"""The editorial workflow around an issue file: drafts from the city's own feeds (draft.py,
docs/drafts.md).

Above `content` (it writes issue YAML and checks it with content's model), beside `render` and
`audience` (it needs neither); the CLI is a thin layer over `draft_from_feeds`.
"""

from newsletter.editorial.draft import draft_from_feeds, latest_issue_date

__all__ = ["draft_from_feeds", "latest_issue_date"]
