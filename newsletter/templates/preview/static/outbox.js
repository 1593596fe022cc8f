// Outbox list: reload when the server reports new mail in the Maildir.
(() => {
  "use strict";
  let first = true;
  new EventSource("/events").addEventListener("outbox", () => {
    if (first) { first = false; return; }  // the first event is the current state
    location.reload();
  });
})();
