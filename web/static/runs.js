// The runs list: live rows, and "Load more" appends the next (older) page in place.
//
// Live: the first page (the section's data-live-url, its /runs/rows fragment with the page's
// filters) is fetched every few seconds; rows whose state or progress changed are replaced in
// place and new runs appear at the top, so the list follows the fleet without a reload.
// Load more: the link's href is the plain next-page URL (works without JavaScript); its
// data-fragment-url returns {"html": "<tr>…", "more_url": …, "more_fragment_url": …} with rows
// rendered by the page's own template macro.
(function () {
  "use strict";

  var LIVE_INTERVAL_MS = 3000;
  var link = document.getElementById("load-more");
  var body = document.getElementById("runs-body");
  var live = document.getElementById("runs-live");
  if (typeof window.fetch !== "function") {
    return;
  }

  function getJson(url) {
    return fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      });
  }

  function parseRows(html) {
    var template = document.createElement("template");
    template.innerHTML = String(html || "").trim();
    return template.content.querySelectorAll("tr.run-row");
  }

  // ---- live first page
  var polling = false;
  function refresh() {
    if (!live || polling || document.hidden) {
      return;
    }
    polling = true;
    getJson(live.getAttribute("data-live-url"))
      .then(function (data) {
        var rows = parseRows(data.html);
        if (!body) {
          if (rows.length) {
            window.location.reload(); // the first run: the page draws its table
          }
          return;
        }
        var anchor = body.firstElementChild;
        for (var i = 0; i < rows.length; i += 1) {
          var row = rows[i];
          var current = document.getElementById(row.id);
          if (current) {
            if (current.outerHTML !== row.outerHTML) {
              current.replaceWith(row);
              current = row;
            }
            anchor = current.nextElementSibling;
          } else {
            body.insertBefore(row, anchor);
          }
        }
      })
      .catch(function () { /* keep the rows shown; try again next time */ })
      .finally(function () {
        polling = false;
      });
  }
  if (live) {
    window.setInterval(refresh, LIVE_INTERVAL_MS);
    document.addEventListener("visibilitychange", refresh);
  }

  // ---- load more
  if (!link || !body) {
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
    getJson(url)
      .then(function (data) {
        var rows = parseRows(data.html);
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
