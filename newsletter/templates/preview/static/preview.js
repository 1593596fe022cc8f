// Live preview: follow the server's render state over server-sent events, swap the email
// content in place (so view and scroll position survive), and switch between views.
(() => {
  "use strict";
  const VIEWS = ["desktop", "phone", "text", "headers"];
  const stage = document.getElementById("stage");
  const frame = document.getElementById("email");
  const textPane = document.getElementById("text");
  const statusEl = document.getElementById("status");
  let state = JSON.parse(document.getElementById("initial-state").textContent);
  let shownVersion = state.ok ? state.version : -1;  // version of the HTML in the frame

  // ---- views: remembered in the URL hash and across reloads of the page
  function setView(view) {
    if (!VIEWS.includes(view)) view = "desktop";
    stage.dataset.view = view;
    for (const button of document.querySelectorAll("[data-view]")) {
      button.setAttribute("aria-selected", String(button.dataset.view === view));
    }
    localStorage.setItem("newsletter-preview-view", view);
    if (location.hash !== "#" + view) history.replaceState(null, "", "#" + view);
  }
  for (const button of document.querySelectorAll("[data-view]")) {
    button.addEventListener("click", () => setView(button.dataset.view));
  }
  setView(location.hash.slice(1) || localStorage.getItem("newsletter-preview-view") || "desktop");

  // ---- panels that come straight from the state
  // A hidden frame loses its scroll position: remember it before an error hides the email.
  let savedScroll = null;
  function renderPanels() {
    if (!state.ok && stage.dataset.ok === "true" && frame.contentWindow) {
      savedScroll = [frame.contentWindow.scrollX, frame.contentWindow.scrollY];
    }
    stage.dataset.ok = String(state.ok);
    document.getElementById("error-lines").textContent = state.errors.join("\n");
    const top = textPane.scrollTop;
    textPane.textContent = state.text;
    textPane.scrollTop = top;
    const rows = document.getElementById("header-rows");
    rows.replaceChildren(...state.headers.map(([name, value]) => {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      const td = document.createElement("td");
      th.textContent = name;
      td.textContent = value;
      tr.append(th, td);
      return tr;
    }));
    document.getElementById("preheader").textContent = state.preheader;
    document.getElementById("header-block").textContent = state.header_block;
    // While the issue does not render, the last check results stay (greyed out by CSS).
    if (state.ok) {
      const list = document.getElementById("checks");
      list.replaceChildren(...state.checks.map(([severity, line]) => {
        const li = document.createElement("li");
        li.className = severity;
        li.textContent = line;
        return li;
      }));
      document.getElementById("check-count").textContent = String(state.checks.length);
      document.getElementById("no-checks").hidden = state.checks.length > 0;
    }
    if (state.subject) document.title = state.subject + " – newsletter preview";
  }

  // ---- the email: fetch the new HTML and replace the frame's document element in place,
  // restoring the scroll position before the next paint (no reload flash, no jump).
  let loading = null;
  async function refreshEmail() {
    const wanted = state.version;
    if (!state.ok || wanted === shownVersion) return;
    if (loading) { await loading; return refreshEmail(); }
    loading = (async () => {
      const response = await fetch("/email.html?v=" + wanted, { cache: "no-store" });
      if (!response.ok) return;
      const html = await response.text();
      const doc = frame.contentDocument;
      const win = frame.contentWindow;
      if (!doc || !doc.documentElement || doc.readyState === "loading") {
        frame.src = "/email.html?v=" + wanted;
      } else {
        const [x, y] = savedScroll || [win.scrollX, win.scrollY];
        savedScroll = null;
        const fresh = new DOMParser().parseFromString(html, "text/html");
        doc.replaceChild(doc.importNode(fresh.documentElement, true), doc.documentElement);
        win.scrollTo(x, y);
      }
      shownVersion = wanted;
    })();
    try { await loading; } finally { loading = null; }
  }

  function showStatus() {
    const when = state.rendered_at ? ` · rendered ${state.rendered_at} in ${Math.round(state.render_ms)} ms` : "";
    statusEl.textContent = (state.ok ? "live" : "error") + when;
    statusEl.dataset.state = state.ok ? "ok" : "error";
  }

  function connect() {
    const source = new EventSource("/events");
    source.addEventListener("issue", (event) => {
      state = JSON.parse(event.data);
      renderPanels();
      showStatus();
      refreshEmail().catch((error) => console.error("preview: refreshing the email failed", error));
    });
    source.addEventListener("error", () => {
      statusEl.textContent = "server not reachable – retrying …";
      statusEl.dataset.state = "offline";
    });
  }

  renderPanels();
  showStatus();
  connect();
})();
