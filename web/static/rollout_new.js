// The new-rollout form's summary of what will happen, updated while it is typed: how many hosts
// (the live count targets.js sends as a "selector-count" event), the hosts of each wave (as
// server/waves.py wave_sizes computes them: a percentage rounds up, a count is capped, a wave
// never takes fewer hosts than the one before) and when a wave halts the rollout. The server
// checks every value again when the form is posted.
(function () {
  "use strict";

  var form = document.getElementById("rollout-form");
  var summary = document.getElementById("rollout-summary");
  var input = document.getElementById("selector-input");
  if (!form || !summary || !input) {
    return;
  }
  var wavesInput = document.getElementById("rollout-waves");
  var rateInput = document.getElementById("rollout-max-failure-rate");
  var failuresInput = document.getElementById("rollout-max-failures");
  var soakInput = document.getElementById("rollout-soak");
  var total = null; // hosts the selector picks (null: not counted yet)
  var selectorError = "";
  var WAVE = /^(\d+(?:\.\d+)?)(%?)$/;

  function labels() {
    return wavesInput.value.split(",").map(function (p) { return p.trim(); })
      .filter(function (p) { return p !== ""; });
  }

  // Cumulative sizes, or a string saying what is wrong with the waves.
  function sizes(waves, n) {
    if (waves.length === 0) { return "give at least one wave"; }
    var out = [];
    for (var i = 0; i < waves.length; i++) {
      var m = WAVE.exec(waves[i]);
      if (!m) { return "wave " + (i + 1) + " (" + waves[i] + ") is not a host count or a percentage"; }
      var value = parseFloat(m[1]);
      var size = m[2] ? Math.ceil(n * value / 100 - 1e-9) : Math.floor(value);
      size = Math.min(Math.max(size, n ? 1 : 0), n);
      out.push(out.length ? Math.max(size, out[out.length - 1]) : size);
    }
    if (waves[waves.length - 1] !== "100%") { return "the last wave must be 100%"; }
    return out;
  }

  function plural(n, word) {
    return n + " " + word + (n === 1 ? "" : "s");
  }

  function gates() {
    var rate = rateInput.value.trim().replace(/%$/, "").trim();
    var failures = failuresInput.value.trim();
    var parts = [];
    if (rate !== "") { parts.push("more than " + rate + " % of a wave fails"); }
    if (failures !== "") { parts.push("more than " + plural(parseInt(failures, 10) || 0, "host") + " of a wave fail"); }
    if (!parts.length) { return "halts at the first failure"; }
    return "halts when " + parts.join(" or ");
  }

  function render() {
    if (selectorError) {
      summary.textContent = "The selector does not parse: " + selectorError;
      return;
    }
    if (total === null) {
      summary.textContent = "Counting the hosts\u2026";
      return;
    }
    if (total === 0) {
      summary.textContent = "The selector picks no host: there is nothing to roll out to.";
      return;
    }
    var waves = labels();
    var cumulative = sizes(waves, total);
    if (typeof cumulative === "string") {
      summary.textContent = plural(total, "host") + "; waves: " + cumulative + ".";
      return;
    }
    var steps = waves.map(function (label, i) {
      if (label === "100%") { return "all"; }
      var own = cumulative[i] - (i ? cumulative[i - 1] : 0);
      return label.replace(/%$/, " %") + " (" + plural(own, "host") + ")";
    });
    var text = plural(total, "host") + " in " + plural(waves.length, "wave") + ": " +
      steps.join(", then ") + "; " + gates();
    var soak = soakInput.value.trim();
    if (soak !== "" && soak !== "0" && waves.length > 1) { text += "; waits " + soak + " between waves"; }
    summary.textContent = text + ".";
  }

  input.addEventListener("selector-count", function (event) {
    var detail = event.detail || {};
    selectorError = detail.error || "";
    total = typeof detail.count === "number" ? detail.count : null;
    render();
  });
  input.addEventListener("input", function () { total = null; selectorError = ""; render(); });
  [wavesInput, rateInput, failuresInput, soakInput].forEach(function (el) {
    el.addEventListener("input", render);
  });
  render();
}());
