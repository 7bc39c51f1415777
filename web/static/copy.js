// Copy buttons: every element marked data-copy gets a small "Copy" button after it that puts its
// value (the attribute's, or else the element's text) on the clipboard and says "Copied".
(function () {
  "use strict";

  function fallback(text) {
    // Outside a secure context (plain http to a remote host) there is no Clipboard API.
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.appendChild(area);
    area.select();
    var done = false;
    try { done = document.execCommand("copy"); } catch (e) { done = false; }
    document.body.removeChild(area);
    return done ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  function write(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () { return fallback(text); });
    }
    return fallback(text);
  }

  function add(el) {
    if (el.dataset.copyReady) { return; }
    el.dataset.copyReady = "1";
    var button = document.createElement("button");
    button.type = "button";
    button.className = "copy-button";
    button.textContent = "Copy";
    var what = el.getAttribute("data-copy-label") || "value";
    button.setAttribute("aria-label", "Copy " + what);
    button.addEventListener("click", function () {
      var text = el.getAttribute("data-copy") || el.textContent.trim();
      write(text).then(function () {
        button.textContent = "Copied";
      }, function () {
        button.textContent = "Copy failed";
      }).then(function () {
        window.setTimeout(function () { button.textContent = "Copy"; }, 1500);
      });
    });
    el.insertAdjacentElement("afterend", button);
  }

  function scan(root) {
    if (root.nodeType !== 1) { return; }
    if (root.hasAttribute("data-copy")) { add(root); }
    var found = root.querySelectorAll("[data-copy]");
    for (var i = 0; i < found.length; i++) { add(found[i]); }
  }

  function start() {
    scan(document.body);
    new MutationObserver(function (changes) {
      changes.forEach(function (change) { change.addedNodes.forEach(scan); });
    }).observe(document.body, { childList: true, subtree: true });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
