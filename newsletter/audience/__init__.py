"""Lists, subscribers, consent log, suppression, CSV import/export: the subscriber store."""
