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

  // A link to a line (#log-SEQ) opens at that line; a finished run opens at its top; a live one
  // follows its tail.
  var target = window.location.hash ? document.getElementById(window.location.hash.slice(1)) : null;
  if (target && list.contains(target)) {
    following = false;
    view.scrollTop = target.offsetTop - view.offsetTop - view.clientHeight / 3;
  } else if (panel.getAttribute("data-finished") === "true") {
    view.scrollTop = 0; // nothing more will come: no "Follow" button either
  } else {
    scrollToEnd();
  }
  updateFollowButton();

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

  // The input prompt (a run waiting for input). Built with DOM APIs from the stream's
  // `input_request` (labels and errors go in as text, never as HTML), and only when its key
  // changes (a new ask, or answers sent): a form someone is typing into is left alone.
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      node.setAttribute(name, attrs[name]);
    });
    if (text) {
      node.textContent = text;
    }
    return node;
  }

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") || "" : "";
  }

  function buildPrompt(section, ask) {
    var canAnswer = section.getAttribute("data-can-answer") === "true";
    var n = ask.fields.length;
    section.appendChild(el("h2", { id: "input-title" }, "Waiting for input"));
    section.appendChild(el("p", { "class": "input-asked muted" },
      "The agent asked" + (ask.requested_display ? " at " + ask.requested_display : "") +
      " for " + n + " value" + (n === 1 ? "" : "s") + " the old configuration never held."));
    if (ask.answered) {
      section.appendChild(el("p", { "class": "notice notice-ok input-sent", role: "status" },
        "Answers sent by " + ask.answered_by +
        (ask.answered_display ? " at " + ask.answered_display : "") +
        ", waiting for the agent."));
      return;
    }
    if (!canAnswer) {
      section.appendChild(el("p", { "class": "input-viewer" }, "An admin must provide:"));
      var list = el("ul", { "class": "input-list" });
      ask.fields.forEach(function (field) {
        var item = el("li", {}, field.label);
        if (field.error) {
          item.appendChild(document.createTextNode(" "));
          item.appendChild(el("span", { "class": "field-error" }, field.error));
        }
        list.appendChild(item);
      });
      section.appendChild(list);
      return;
    }
    var form = el("form", {
      "class": "input-form", method: "post", action: ask.action, id: "input-form",
      autocomplete: "off"
    });
    var csrf = el("input", { type: "hidden", name: "csrf_token" });
    csrf.value = csrfToken();
    form.appendChild(csrf);
    var rid = el("input", { type: "hidden", name: "request_id" });
    rid.value = ask.request_id;
    form.appendChild(rid);
    ask.fields.forEach(function (field) {
      var id = "input-" + field.name;
      var box = el("div", { "class": "field input-field" + (field.error ? " has-error" : "") });
      var label = el("label", { "for": id }, field.label);
      if (field.secret) {
        label.appendChild(document.createTextNode(" "));
        label.appendChild(el("span", { "class": "muted" }, "(secret)"));
      }
      box.appendChild(label);
      var input = el("input", {
        id: id, name: "input." + field.name, type: field.secret ? "password" : "text",
        autocomplete: field.secret ? "new-password" : "off"
      });
      input.required = true;
      box.appendChild(input);
      if (field.error) {
        input.setAttribute("aria-invalid", "true");
        input.setAttribute("aria-describedby", id + "-error");
        box.appendChild(el("p", { "class": "field-error", id: id + "-error" }, field.error));
      }
      form.appendChild(box);
    });
    var actions = el("div", { "class": "input-actions" });
    actions.appendChild(el("button", {
      type: "submit", "class": "button button-primary", id: "input-submit"
    }, "Send to the agent"));
    actions.appendChild(el("span", { "class": "muted" },
      "Kept encrypted until the agent has them; to dismiss the prompt, cancel the run."));
    form.appendChild(actions);
    section.appendChild(form);
  }

  function updatePrompt(ask) {
    var section = document.getElementById("input-prompt");
    if (!section) {
      return;
    }
    var valid = ask && typeof ask.key === "string" && Array.isArray(ask.fields);
    var key = valid ? ask.key : "";
    if (section.getAttribute("data-key") === key) {
      return;
    }
    section.setAttribute("data-key", key);
    while (section.firstChild) {
      section.removeChild(section.firstChild);
    }
    section.hidden = !valid;
    if (valid) {
      buildPrompt(section, ask);
    }
  }

  // The page's notice ("Cancellation requested…", "Answers sent, waiting for the agent…")
  // goes once what it waits for has happened: the run ended, or the agent took the answers.
  function dropPassedNotice(run) {
    var notice = document.getElementById("page-notice");
    var until = notice ? notice.getAttribute("data-until") : "";
    if (!until) {
      return;
    }
    var ask = run.input_request;
    var passed = until === "terminal" ? run.terminal : !(ask && ask.answered);
    if (passed) {
      notice.remove();
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
    updatePrompt(data.run.input_request);
    dropPassedNotice(data.run);
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
