// The fleet page's selector: a live count of the hosts an expression picks while it is typed
// (debounced; GET /api/v1/agents/select/count), and for admins a bulk tag change on those
// hosts after a confirmation naming the count (POST /api/v1/agents/tags). The new-rollout
// form reuses the count (the same element ids, no #selector-form): each answer is also sent to
// the input as a "selector-count" event ({count} or {error}) for that page's summary.
(function () {
  "use strict";

  var input = document.getElementById("selector-input");
  var count = document.getElementById("selector-count");
  var hosts = document.getElementById("selector-hosts");
  var form = document.getElementById("selector-form");
  if (!input || !count || !hosts || typeof window.fetch !== "function") {
    return;
  }
  var tag = document.getElementById("selector-tag");
  var add = document.getElementById("selector-tag-add");
  var remove = document.getElementById("selector-tag-remove");
  var result = document.getElementById("selector-tag-result");
  var DELAY_MS = 250;
  var SHOWN = 5;
  var timer = null;
  var sequence = 0; // answers to older requests are ignored
  var matched = null; // {expression, count} of the last answer

  function expressions() {
    var text = input.value.trim();
    return text ? [text] : [];
  }

  function setButtons() {
    var ready = matched !== null && matched.count > 0 && tag && tag.value.trim() !== "";
    if (add) { add.disabled = !ready; }
    if (remove) { remove.disabled = !ready; }
  }

  function show(data) {
    var n = data.count;
    count.textContent = n + (n === 1 ? " host matches" : " hosts match");
    count.classList.remove("selector-error");
    var names = data.agents.map(function (a) { return a.hostname; });
    hosts.textContent = names.length
      ? names.join(", ") + (n > names.length ? " and " + (n - names.length) + " more" : "")
      : "";
  }

  function announce(detail) {
    input.dispatchEvent(new CustomEvent("selector-count", { detail: detail }));
  }

  function refresh() {
    var mine = ++sequence;
    var params = new URLSearchParams();
    expressions().forEach(function (e) { params.append("select", e); });
    params.append("limit", String(SHOWN));
    count.setAttribute("aria-busy", "true");
    fetch("/api/v1/agents/select/count?" + params.toString(), {
      headers: { "Accept": "application/json" },
      credentials: "same-origin"
    })
      .then(function (response) {
        return response.json().then(function (data) { return { ok: response.ok, data: data }; });
      })
      .then(function (answer) {
        if (mine !== sequence) { return; }
        if (answer.ok) {
          matched = { expression: input.value.trim(), count: answer.data.count };
          show(answer.data);
          announce({ count: answer.data.count });
        } else {
          matched = null;
          count.textContent = answer.data.message || "invalid selector";
          count.classList.add("selector-error");
          hosts.textContent = "";
          announce({ error: count.textContent });
        }
        setButtons();
      })
      .catch(function () {
        if (mine === sequence) { count.textContent = "count unavailable"; }
      })
      .finally(function () {
        if (mine === sequence) { count.removeAttribute("aria-busy"); }
      });
  }

  function schedule() {
    matched = null;
    setButtons();
    if (timer !== null) { window.clearTimeout(timer); }
    timer = window.setTimeout(refresh, DELAY_MS);
  }

  function change(verb, field) {
    if (matched === null || !tag) { return; }
    var name = tag.value.trim();
    var n = matched.count;
    var question = verb + " tag \u201c" + name + "\u201d " + (verb === "Add" ? "to " : "from ") +
      n + (n === 1 ? " host" : " hosts") + "?";
    if (!window.confirm(question)) { return; }
    var body = { select: expressions() };
    body[field] = [name];
    var meta = document.querySelector('meta[name="csrf-token"]');
    fetch("/api/v1/agents/tags", {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "X-CSRF-Token": meta ? meta.getAttribute("content") : ""
      },
      body: JSON.stringify(body)
    })
      .then(function (response) {
        return response.json().then(function (data) { return { ok: response.ok, data: data }; });
      })
      .then(function (answer) {
        if (!answer.ok) {
          result.textContent = answer.data.message || "refused";
          return;
        }
        result.textContent = answer.data.changed + " of " + answer.data.matched +
          " hosts changed; reloading\u2026";
        window.location.reload();
      })
      .catch(function () { result.textContent = "the tag change failed; try again"; });
  }

  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      refresh();
    });
  }
  input.addEventListener("input", schedule);
  if (tag) { tag.addEventListener("input", setButtons); }
  if (add) { add.addEventListener("click", function () { change("Add", "add"); }); }
  if (remove) { remove.addEventListener("click", function () { change("Remove", "remove"); }); }
  refresh();
}());
