"""From a validated issue to email HTML, text part, web version, .ics, archive, checks."""
