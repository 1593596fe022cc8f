"""From a rendered issue to sent mail: messages, tokens, transport, journal, the send loop."""
