// The header's "N waiting for input": kept current without a reload.
//
// Polls GET /runs/waiting ({"count": n}) every few seconds while the tab is visible, and shows,
// updates or removes the header link. Without JavaScript the header shows the count as of the
// page load.
(function () {
  "use strict";

  var INTERVAL_MS = 3000;
  var URL_PATH = "/runs/waiting";

  function header() {
    return document.querySelector(".site-header .header-inner");
  }

  function render(count) {
    var link = document.getElementById("header-waiting");
    if (!count) {
      if (link) {
        link.remove();
      }
      return;
    }
    if (!link) {
      var inner = header();
      if (!inner) {
        return;
      }
      link = document.createElement("a");
      link.className = "header-waiting";
      link.id = "header-waiting";
      link.href = "/runs?state=awaiting_input";
      link.title = "Runs waiting for an admin to provide input";
      var span = document.createElement("span");
      span.className = "count";
      link.appendChild(span);
      link.appendChild(document.createTextNode(" waiting for input"));
      inner.insertBefore(link, inner.querySelector(".session-info"));
    }
    var slot = link.querySelector(".count");
    if (slot && slot.textContent !== String(count)) {
      slot.textContent = String(count);
    }
  }

  function poll() {
    if (document.hidden || typeof window.fetch !== "function") {
      return;
    }
    fetch(URL_PATH, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        return response.ok ? response.json() : null;
      })
      .then(function (data) {
        if (data && typeof data.count === "number") {
          render(data.count);
        }
      })
      .catch(function () { /* keep what is shown; try again next time */ });
  }

  window.setInterval(poll, INTERVAL_MS);
  document.addEventListener("visibilitychange", poll);
})();
