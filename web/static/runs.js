// The runs list: "Load more" appends the next (older) page in place instead of navigating.
//
// The link's href is the plain next-page URL (works without JavaScript); its
// data-fragment-url returns {"html": "<tr>…", "more_url": …, "more_fragment_url": …} with rows
// rendered by the page's own template macro.
(function () {
  "use strict";

  var link = document.getElementById("load-more");
  var body = document.getElementById("runs-body");
  if (!link || !body || typeof window.fetch !== "function") {
    return;
  }
  var busy = false;

  link.addEventListener("click", function (event) {
    var url = link.getAttribute("data-fragment-url");
    if (!url) {
      return; // follow the plain link
    }
    event.preventDefault();
    if (busy) {
      return;
    }
    busy = true;
    link.setAttribute("aria-busy", "true");
    link.textContent = "Loading…";
    fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        var template = document.createElement("template");
        template.innerHTML = String(data.html || "").trim();
        var rows = template.content.querySelectorAll("tr.run-row");
        for (var i = 0; i < rows.length; i += 1) {
          if (!document.getElementById(rows[i].id)) {
            body.appendChild(rows[i]);
          }
        }
        if (data.more_url && data.more_fragment_url) {
          link.setAttribute("href", data.more_url);
          link.setAttribute("data-fragment-url", data.more_fragment_url);
          link.textContent = "Load more";
        } else {
          link.remove();
        }
      })
      .catch(function () {
        // Fall back to the plain page on any failure.
        window.location.href = link.getAttribute("href");
      })
      .finally(function () {
        busy = false;
        link.removeAttribute("aria-busy");
      });
  });
})();
