// The fleet page's bulk actions (admins): pick hosts with the row checkboxes (or "select all
// shown"), or take all hosts matching the selector above (its live count comes from
// targets.js as "selector-count" events); choose an action (run a spec, cancel active runs,
// add or remove a tag, revoke) and confirm a question naming the count. One
// POST /api/v1/agents/bulk; the answer's counts go to the result line.
(function () {
  "use strict";

  var panel = document.getElementById("bulk");
  var input = document.getElementById("selector-input");
  if (!panel || !input || typeof window.fetch !== "function") {
    return;
  }
  var all = document.getElementById("bulk-all");
  var rows = Array.prototype.slice.call(document.querySelectorAll("input.bulk-row"));
  var checkedCount = document.getElementById("bulk-checked-count");
  var filterCount = document.getElementById("bulk-filter-count");
  var scopeChecked = document.getElementById("bulk-scope-checked");
  var scopeFilter = document.getElementById("bulk-scope-filter");
  var action = document.getElementById("bulk-action");
  var spec = document.getElementById("bulk-spec");
  var tag = document.getElementById("bulk-tag");
  var apply = document.getElementById("bulk-apply");
  var result = document.getElementById("bulk-result");
  var filter = null; // {expression, count} of the selector's last good count

  function hosts(n) {
    return n + (n === 1 ? " host" : " hosts");
  }

  function checkedIds() {
    return rows.filter(function (box) { return box.checked; })
      .map(function (box) { return box.value; });
  }

  function target() {
    if (scopeFilter.checked) {
      if (filter === null) { return null; }
      var text = filter.expression;
      return { count: filter.count, body: { select: text ? [text] : [] } };
    }
    var ids = checkedIds();
    return { count: ids.length, body: { agent_ids: ids } };
  }

  function argument() {
    var kind = action.value;
    if (kind === "run_spec") { return spec.value; }
    if (kind === "add_tags" || kind === "remove_tags") { return tag.value.trim(); }
    return "-";
  }

  function refresh() {
    var ids = checkedIds();
    checkedCount.textContent = String(ids.length);
    if (all) {
      all.checked = rows.length > 0 && ids.length === rows.length;
      all.indeterminate = ids.length > 0 && ids.length < rows.length;
    }
    filterCount.textContent = filter === null ? "\u2026" : String(filter.count);
    var kind = action.value;
    Array.prototype.forEach.call(panel.querySelectorAll(".bulk-arg"), function (el) {
      el.hidden = !el.classList.contains("bulk-arg-" + kind);
    });
    var picked = target();
    apply.disabled = picked === null || picked.count === 0 || argument() === "";
  }

  function question(kind, n) {
    if (kind === "run_spec") { return "Run " + spec.value + " on " + hosts(n) + "?"; }
    if (kind === "cancel_runs") { return "Cancel the active runs of " + hosts(n) + "?"; }
    if (kind === "add_tags") { return "Add tag \u201c" + argument() + "\u201d to " + hosts(n) + "?"; }
    if (kind === "remove_tags") {
      return "Remove tag \u201c" + argument() + "\u201d from " + hosts(n) + "?";
    }
    return "Revoke " + hosts(n) + "? Their agents can no longer check in.";
  }

  function outcome(kind, data) {
    var of = " of " + hosts(data.matched);
    if (kind === "run_spec") { return spec.value + " queued on " + data.changed + of + "."; }
    if (kind === "cancel_runs") {
      return data.changed + (data.changed === 1 ? " run" : " runs") + " asked to cancel on " +
        hosts(data.matched) + ".";
    }
    if (kind === "revoke") { return data.changed + of + " revoked."; }
    return data.changed + of + " changed.";
  }

  function run() {
    var picked = target();
    var kind = action.value;
    if (picked === null || picked.count === 0) { return; }
    if (!window.confirm(question(kind, picked.count))) { return; }
    var body = picked.body;
    body.action = kind;
    if (kind === "run_spec") { body.spec_id = spec.value; }
    if (kind === "add_tags" || kind === "remove_tags") { body.tags = [argument()]; }
    var meta = document.querySelector('meta[name="csrf-token"]');
    apply.disabled = true;
    result.textContent = "working\u2026";
    fetch("/api/v1/agents/bulk", {
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
        result.textContent = answer.ok
          ? outcome(kind, answer.data) + " Reload the page to see the hosts now."
          : (answer.data.message || "refused");
      })
      .catch(function () { result.textContent = "the bulk action failed; try again"; })
      .finally(refresh);
  }

  input.addEventListener("selector-count", function (event) {
    var detail = event.detail || {};
    filter = typeof detail.count === "number"
      ? { expression: input.value.trim(), count: detail.count }
      : null;
    refresh();
  });
  input.addEventListener("input", function () { filter = null; refresh(); });
  rows.forEach(function (box) {
    box.addEventListener("change", function () {
      scopeChecked.checked = true;
      refresh();
    });
  });
  if (all) {
    all.addEventListener("change", function () {
      rows.forEach(function (box) { box.checked = all.checked; });
      scopeChecked.checked = true;
      refresh();
    });
  }
  [scopeChecked, scopeFilter, action, spec].forEach(function (el) {
    el.addEventListener("change", refresh);
  });
  tag.addEventListener("input", refresh);
  apply.addEventListener("click", run);
  refresh();
}());
