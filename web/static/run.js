// The run page: live state, progress and log tail over Server-Sent Events (/runs/{id}/stream).
//
// The server renders every fragment (status block, counts, each log line) with the page's own
// templates, so escaping is identical; this script only places them. The stream takes the page's
// log filters from its URL, so a filtered view stays filtered live. The log auto-scrolls while the
// reader is at the bottom and pauses as soon as they scroll up ("Follow new lines" resumes).
// EventSource resumes with Last-Event-ID (the log seq) after a dropped connection. Without
// JavaScript the page is a complete, static snapshot and the filter form still works.
(function () {
  "use strict";

  var panel = document.querySelector(".log-panel[data-stream-url]");
  var view = document.getElementById("log-view");
  var list = document.getElementById("log-lines");
  var empty = document.getElementById("log-empty");
  var followButton = document.getElementById("follow-button");
  var filterForm = document.getElementById("log-filters");
  var indicator = document.getElementById("live-status");
  var indicatorText = indicator ? indicator.querySelector(".live-text") : null;
  var following = true;
  var unseen = 0;
  var cursor = panel ? panel.getAttribute("data-after") || "" : "";
  var NEAR_BOTTOM_PX = 24;

  // Filters apply as soon as they change (the form still has its submit button without JS).
  if (filterForm) {
    filterForm.addEventListener("change", function (event) {
      if (event.target && event.target.name !== "q") {
        filterForm.submit();
      }
    });
  }

  if (!panel || !view || !list) {
    return;
  }

  function atBottom() {
    return view.scrollHeight - view.scrollTop - view.clientHeight <= NEAR_BOTTOM_PX;
  }

  function scrollToEnd() {
    view.scrollTop = view.scrollHeight;
  }

  function updateFollowButton() {
    if (!followButton) {
      return;
    }
    followButton.hidden = following;
    followButton.textContent = unseen > 0
      ? "Follow new lines ↓ (" + unseen + " new)"
      : "Follow new lines ↓";
  }

  view.addEventListener("scroll", function () {
    var bottom = atBottom();
    if (bottom !== following) {
      following = bottom;
      if (following) {
        unseen = 0;
      }
      updateFollowButton();
    }
  }, { passive: true });

  if (followButton) {
    followButton.addEventListener("click", function () {
      following = true;
      unseen = 0;
      scrollToEnd();
      updateFollowButton();
    });
  }

  scrollToEnd();

  var LABELS = {
    connecting: "Connecting…",
    live: "Live",
    reconnecting: "Reconnecting…",
    offline: "Live updates paused",
    done: "Run finished"
  };

  function setState(state) {
    if (!indicator) {
      return;
    }
    indicator.hidden = false;
    indicator.setAttribute("data-state", state);
    indicatorText.textContent = LABELS[state] || state;
  }

  function fragment(html) {
    var template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.firstElementChild;
  }

  function replaceById(id, html) {
    var current = document.getElementById(id);
    var next = fragment(html);
    if (current && next && next.id === id) {
      current.replaceWith(next);
    }
  }

  function onLog(message) {
    var data;
    try {
      data = JSON.parse(message.data);
    } catch (err) {
      return;
    }
    if (!data || !data.line || typeof data.html !== "string") {
      return;
    }
    cursor = message.lastEventId || String(data.line.seq);
    if (document.getElementById("log-" + data.line.seq)) {
      return; // never twice
    }
    var row = fragment(data.html);
    if (!row || row.tagName !== "LI") {
      return;
    }
    var stick = following && atBottom();
    row.classList.add("log-new");
    list.appendChild(row);
    if (empty) {
      empty.hidden = true;
    }
    if (stick) {
      scrollToEnd();
    } else {
      following = false;
      unseen += 1;
      updateFollowButton();
    }
  }

  function onRun(message) {
    var data;
    try {
      data = JSON.parse(message.data);
    } catch (err) {
      return;
    }
    if (!data || !data.run) {
      return;
    }
    if (typeof data.status_html === "string") {
      replaceById("run-status", data.status_html);
    }
    if (typeof data.counts_html === "string") {
      replaceById("log-counts", data.counts_html);
    }
    var cancelForm = document.getElementById("cancel-form");
    if (cancelForm) {
      cancelForm.hidden = !data.run.cancellable;
    }
    setState(data.run.terminal ? "done" : "live");
  }

  function streamUrl() {
    var url = new URL(panel.getAttribute("data-stream-url"), window.location.href);
    if (cursor) {
      url.searchParams.set("after", cursor);
    }
    return url.toString();
  }

  window.FlagpostLive.open({
    url: streamUrl,
    listeners: { log: onLog, run: onRun },
    setState: setState,
  });
})();
