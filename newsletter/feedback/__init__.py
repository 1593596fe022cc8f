"""The feedback loop: reading bounces, complaints and auto-replies that arrive after a send.

* `reports` — `read_report(raw)`: what one message reports (hard/soft bounce, complaint, …);
* (the signed per-delivery tag in the envelope sender ``bounces+<tag>@…`` is `delivery/verp`;
  the send mints it, the reports and webhooks here read it)
* `mailboxes` — where reports are read from (IMAP, POP3, Maildir, mbox), marked exactly once;
* `webhooks`, `providers` — provider events (SES via SNS, Mailgun, Postmark, our own signed JSON);
* `tables` — `feedback_events`, the ledger; `ledger` — taking an event in: match, policy, record.

Nothing is imported here: the store's migrations import `tables`, and every command that opens
the store must not pay for the report parser.

See docs/feedback.md.
"""
