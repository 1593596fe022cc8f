"""One module per webhook provider (sns, mailgun, postmark, generic) and what they share
(base). The public entry point is `newsletter.feedback.webhooks.handle`."""
