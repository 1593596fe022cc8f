"""The database layer every package shares: engine and transactions (`engine`), the common
MetaData and column types (`schema`), the schema versions and their migrations (`migrations`).

Tables are not defined here: each package owns its own (`audience/tables.py`,
`delivery/tables.py`) and no other package touches them. See docs/data-model.md.
"""
