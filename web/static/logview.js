// The run page's log viewer, in the browser: the Search field filters the lines on the page while
// it is typed (and those arriving live), highlighting each match; "N of M lines" says how many
// match. Enter still submits the form, so a log bigger than the page is searched on the server.
// Matches are marked by splitting text nodes (no markup is ever parsed from the log).
(function () {
  "use strict";

  var input = document.getElementById("f-q");
  var list = document.getElementById("log-lines");
  var count = document.getElementById("log-match");
  if (!input || !list) { return; }
  var DELAY_MS = 60;
  var timer = null;
  var current = "";

  function unmark(line) {
    var marks = line.querySelectorAll("mark.log-hit");
    for (var i = 0; i < marks.length; i++) {
      var mark = marks[i];
      mark.replaceWith(document.createTextNode(mark.textContent));
    }
    if (marks.length) { line.normalize(); }
  }

  function mark(message, needle) {
    var walker = document.createTreeWalker(message, NodeFilter.SHOW_TEXT);
    var nodes = [];
    while (walker.nextNode()) { nodes.push(walker.currentNode); }
    nodes.forEach(function (node) {
      var text = node.nodeValue;
      var lower = text.toLowerCase();
      var at = lower.indexOf(needle);
      if (at < 0) { return; }
      var parts = document.createDocumentFragment();
      var from = 0;
      while (at >= 0) {
        if (at > from) { parts.appendChild(document.createTextNode(text.slice(from, at))); }
        var hit = document.createElement("mark");
        hit.className = "log-hit";
        hit.textContent = text.slice(at, at + needle.length);
        parts.appendChild(hit);
        from = at + needle.length;
        at = lower.indexOf(needle, from);
      }
      if (from < text.length) { parts.appendChild(document.createTextNode(text.slice(from))); }
      node.replaceWith(parts);
    });
  }

  function apply(line) {
    var message = line.querySelector(".log-message");
    if (!message) { return true; }
    unmark(message);
    if (!current) {
      line.classList.remove("log-filtered");
      return true;
    }
    var hit = message.textContent.toLowerCase().indexOf(current) >= 0;
    line.classList.toggle("log-filtered", !hit);
    if (hit) { mark(message, current); }
    return hit;
  }

  function refresh() {
    current = input.value.trim().toLowerCase();
    var lines = list.querySelectorAll("li.log-line");
    var shown = 0;
    for (var i = 0; i < lines.length; i++) {
      if (apply(lines[i])) { shown += 1; }
    }
    if (count) {
      count.textContent = current ? shown + " of " + lines.length + " lines on the page match" : "";
    }
  }

  input.addEventListener("input", function () {
    if (timer) { window.clearTimeout(timer); }
    timer = window.setTimeout(refresh, DELAY_MS);
  });
  new MutationObserver(function (changes) {
    var added = false;
    changes.forEach(function (change) {
      change.addedNodes.forEach(function (node) {
        if (node.nodeType === 1 && node.classList.contains("log-line")) { added = true; }
      });
    });
    if (added && current) { refresh(); }
  }).observe(list, { childList: true });
  if (input.value.trim()) { refresh(); }
})();
