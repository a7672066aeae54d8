// storefleet dashboard: the little behaviour htmx leaves to the page (no inline script: CSP).
(function () {
  "use strict";
  var MAX_LOG_LINES = 2000;

  function flash(text) {
    var box = document.getElementById("flash");
    if (!box) { return; }
    var p = document.createElement("p");
    p.className = "error";
    p.textContent = text;  // text, never markup
    box.replaceChildren(p);
  }

  function detailOf(xhr) {
    try {
      var body = JSON.parse(xhr.responseText);
      if (body && typeof body.detail === "string") { return body.detail; }
    } catch (e) { /* not JSON */ }
    return "the request failed (" + xhr.status + ")";
  }

  // Errors: an HTML answer (an error fragment, a form with its errors) is swapped like any
  // other; a JSON one (refused before the dashboard: CSRF, rate limit) becomes a message.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    if (xhr.status < 400) {
      var box = document.getElementById("flash");
      if (box && event.detail.target !== box) { box.replaceChildren(); }
      return;
    }
    var type = xhr.getResponseHeader("content-type") || "";
    if (type.indexOf("text/html") === 0) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    } else {
      event.detail.shouldSwap = false;
      flash(detailOf(xhr));
    }
  });

  document.addEventListener("htmx:sendError", function () {
    flash("the control plane did not answer: check that it runs, then retry");
  });

  // A followed log keeps its last MAX_LOG_LINES lines and stays scrolled to the end.
  document.addEventListener("htmx:sseMessage", function (event) {
    var log = event.target;
    if (!log || !log.classList || !log.classList.contains("log")) { return; }
    while (log.childElementCount > MAX_LOG_LINES) { log.removeChild(log.firstElementChild); }
    log.scrollTop = log.scrollHeight;
  });
})();
