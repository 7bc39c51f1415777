// Live History: new rows matching the page's filters appear at the top without a reload.
//
// The server renders each row (same template, same escaping as the page) and streams it over
// Server-Sent Events from /history/stream with the page's own filters. Only the first page is
// live (the server omits data-live-url when a `before` cursor is set). The browser's EventSource
// resumes with Last-Event-ID after a dropped connection; if it gives up, we reconnect from the
// last id we saw. Without JavaScript the page is unchanged and fully usable.
(function () {
  "use strict";

  var section = document.querySelector("[data-live-url]");
  if (!section || typeof window.EventSource !== "function") {
    return;
  }
  var list = section.querySelector("ol.events");
  var table = section.querySelector(".events-table");
  var emptyState = section.querySelector(".empty-state");
  var indicator = document.getElementById("live-status");
  var indicatorText = indicator ? indicator.querySelector(".live-text") : null;
  var baseUrl = section.getAttribute("data-live-url");
  var cursor = section.getAttribute("data-live-after") || "";
  var newCount = 0;

  var LABELS = {
    connecting: "Connecting…",
    live: "Live",
    reconnecting: "Reconnecting…",
    offline: "Live updates paused"
  };

  function setState(state) {
    if (!indicator) {
      return;
    }
    indicator.hidden = false;
    indicator.setAttribute("data-state", state);
    var label = LABELS[state] || state;
    if (state === "live" && newCount > 0) {
      label += " · " + newCount + " new";
    }
    indicatorText.textContent = label;
  }

  function streamUrl() {
    var url = new URL(baseUrl, window.location.href);
    if (cursor) {
      url.searchParams.set("after", cursor);
    }
    return url.toString();
  }

  function insertRow(html, id) {
    if (document.getElementById("event-" + id)) {
      return; // already shown (never twice)
    }
    var template = document.createElement("template");
    template.innerHTML = html.trim();
    var row = template.content.firstElementChild;
    if (!row || row.tagName !== "LI") {
      return;
    }
    row.classList.add("event-new");
    row.addEventListener("animationend", function () {
      row.classList.remove("event-new");
    }, { once: true });
    // Keep newest first: place the row before the first row with a smaller id.
    var before = null;
    var rows = list.children;
    for (var i = 0; i < rows.length; i += 1) {
      var otherId = parseInt((rows[i].id || "").replace("event-", ""), 10);
      if (!(otherId > id)) {
        before = rows[i];
        break;
      }
    }
    list.insertBefore(row, before);
    if (table) {
      table.hidden = false;
    }
    if (emptyState) {
      emptyState.hidden = true;
    }
    newCount += 1;
  }

  function onEvent(message) {
    var data;
    try {
      data = JSON.parse(message.data);
    } catch (err) {
      return;
    }
    if (!data || !data.event || typeof data.html !== "string") {
      return;
    }
    cursor = message.lastEventId || String(data.event.id);
    insertRow(data.html, data.event.id);
    setState("live");
  }

  window.FlagpostLive.open({
    url: streamUrl,
    listeners: { event: onEvent },
    setState: setState,
  });
})();
