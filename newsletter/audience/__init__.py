"""Lists, subscribers, consent log, suppression, CSV import/export: the subscriber store.

    addresses  e-mail address rules: normal form, identity (`email_key`), suppression hash
    names      what a subscriber's name may be (`clean_name`), for every way in and out
    statuses   membership statuses, consent sources, the transition rules
    records    the records the store hands out, StoreError
    tables     the audience's tables (only this package touches them)
    writes     the row-level steps of a store write, inside its transaction
    store      Store: the operations (open, lists, sign-up, confirm, unsubscribe/leave, forget)
    queries    read-only query pieces other packages join into their SQL (the send journal)
    csvfile    reading and checking a subscriber CSV (no database)
    importer   an import: publish new subscribers in bounded batches, changes to existing ones
               in the last transaction; undo an interrupted one
    import_stage  its first phase: stream the CSV into a staging table and plan every row
    import_report what happens to each row (the rule) and the report
    export     writing a list back as CSV

See docs/data-model.md.
"""
