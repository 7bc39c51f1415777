// Times in the viewer's zone: every <time datetime="…T…"> the server rendered in UTC (and every
// one a live update adds later) shows the local time, with the UTC original on hover. A viewer
// whose zone is UTC sees the page unchanged. Relative labels ("just now") are left alone.
(function () {
  "use strict";

  if (typeof Intl === "undefined" || !Intl.DateTimeFormat) { return; }
  var zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  if (zone === "UTC" || zone === "Etc/UTC") { return; }
  var format = new Intl.DateTimeFormat("en-CA", {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
    hourCycle: "h23", timeZoneName: "short"
  });

  function local(date) {
    var parts = {};
    format.formatToParts(date).forEach(function (p) { parts[p.type] = p.value; });
    return parts.year + "-" + parts.month + "-" + parts.day + " " + parts.hour + ":" +
      parts.minute + ":" + parts.second + " " + parts.timeZoneName;
  }

  function convert(el) {
    if (el.dataset.localized) { return; }
    var iso = el.getAttribute("datetime") || "";
    if (iso.indexOf("T") < 0 || !/UTC$/.test(el.textContent.trim())) { return; }
    var date = new Date(iso);
    if (isNaN(date.getTime())) { return; }
    el.dataset.localized = "1";
    el.title = el.textContent.trim();
    el.textContent = local(date);
  }

  function scan(root) {
    if (root.nodeType !== 1) { return; }
    if (root.tagName === "TIME") { convert(root); }
    var found = root.querySelectorAll("time[datetime]");
    for (var i = 0; i < found.length; i++) { convert(found[i]); }
  }

  function start() {
    scan(document.body);
    var footer = document.getElementById("footer-zone");
    if (footer) { footer.textContent = "times in your zone (" + zone + "); hover a time for UTC"; }
    new MutationObserver(function (changes) {
      changes.forEach(function (change) {
        change.addedNodes.forEach(scan);
        if (change.type === "characterData" || change.type === "childList") {
          var el = change.target.nodeType === 1 ? change.target : change.target.parentElement;
          if (el && el.tagName === "TIME" && el.dataset.localized &&
              /UTC$/.test(el.textContent.trim())) {
            delete el.dataset.localized; // a live update wrote a new UTC time into it
            convert(el);
          }
        }
      });
    }).observe(document.body, { childList: true, subtree: true, characterData: true });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
