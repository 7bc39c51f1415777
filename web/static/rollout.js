// The rollout page, live: while the rollout is not terminal (COMPLETED, ABORTED, REVERTED) it
// polls GET /api/v1/rollouts/{id} about every second and updates in place the state, reason,
// progress, each wave's counts and failure-rate bar (against its gate, as RolloutGates.breached
// in server/domain.py decides), the hosts, the transitions and which buttons show (the table of
// allowed moves comes from the page, rendered with rollouts_service.can_change). Every value
// from the API is written with textContent or setAttribute, never as markup. The admin's
// buttons ask for a confirmation naming how many hosts the change affects. Without JavaScript
// the page is a static snapshot and the buttons are plain form posts.
(function () {
  "use strict";

  var root = document.getElementById("rollout");
  if (!root) {
    return;
  }
  var apiUrl = root.getAttribute("data-api-url");
  var moves = JSON.parse(root.getAttribute("data-transitions") || "{}");
  var maxRate = number(root.getAttribute("data-max-failure-rate"));
  var maxFailures = number(root.getAttribute("data-max-failures"));
  var badge = document.getElementById("rollout-state");
  var reason = document.getElementById("rollout-reason");
  var indicator = document.getElementById("live-status");
  var indicatorText = indicator ? indicator.querySelector(".live-text") : null;
  var TERMINAL = ["COMPLETED", "ABORTED", "REVERTED"];
  var INTERVAL_MS = 1000;
  var BAR_WIDTH = 300;

  function number(text) {
    return text === null || text === "" ? null : Number(text);
  }

  function plural(n, word) {
    return n + " " + word + (n === 1 ? "" : "s");
  }

  function percentText(rate) {
    return String(Math.round(rate * 1000) / 10) + "%";
  }

  function setText(id, text) {
    var el = document.getElementById(id);
    if (el) { el.textContent = text; }
  }

  function gateRate(hosts) {
    var rates = [];
    if (maxRate !== null) { rates.push(maxRate); }
    if (maxFailures !== null && hosts > 0) { rates.push(Math.min(maxFailures / hosts, 1)); }
    return rates.length ? Math.min.apply(null, rates) : null;
  }

  function breached(failed, hosts) {
    if (maxFailures !== null && failed > maxFailures) { return true; }
    return maxRate !== null && hosts > 0 && failed / hosts > maxRate;
  }

  function showLive(state, text) {
    if (!indicator) { return; }
    indicator.hidden = false;
    indicator.setAttribute("data-state", state);
    if (indicatorText) { indicatorText.textContent = text; }
  }

  // --- the buttons and their confirmations

  function notStarted() { return Number(root.getAttribute("data-not-started")) || 0; }
  function migrated() { return Number(root.getAttribute("data-migrated")) || 0; }

  function showButtons(state) {
    var allowed = moves[state] || [];
    var any = false;
    Array.prototype.forEach.call(document.querySelectorAll(".rollout-action"), function (form) {
      var ok = allowed.indexOf(form.getAttribute("data-to")) >= 0;
      form.hidden = !ok;
      any = any || ok;
    });
    var none = document.getElementById("no-actions");
    if (none) {
      none.hidden = any;
      none.textContent = "No action applies while the rollout is " + state + ".";
    }
    var field = document.getElementById("resume-reason");
    if (field) { field.required = state === "HALTED"; }
    setText("resume-hint", state === "HALTED"
      ? "(required: resuming overrides the halted wave's gate)" : "(optional)");
  }

  function question(form) {
    var waiting = notStarted();
    var state = root.getAttribute("data-state");
    switch (form.id) {
      case "pause-form":
        return "Pause the rollout? " + plural(waiting, "host") +
          " not started yet will wait; started runs finish.";
      case "resume-form":
        return "Resume the rollout? " + plural(waiting, "host") + " not started yet may start" +
          (state === "HALTED" ? ", overriding the halted wave's gate" : "") + ".";
      case "abort-form":
        return "Abort the rollout? " + plural(waiting, "host") +
          " not started yet will be skipped; started runs finish.";
      case "revert-form":
        return "Abort and revert the rollout? " + plural(migrated(), "host") +
          " it migrated will revert from their backups" +
          (waiting ? "; " + plural(waiting, "host") + " not started yet will be skipped" : "") + ".";
      default:
        return "";
    }
  }

  Array.prototype.forEach.call(document.querySelectorAll(".rollout-action"), function (form) {
    form.addEventListener("submit", function (event) {
      var text = question(form);
      if (text && !window.confirm(text)) { event.preventDefault(); }
    });
  });

  // --- applying an answer of the API

  function applyState(data) {
    root.setAttribute("data-state", data.state);
    if (badge) {
      badge.textContent = data.state;
      badge.className = "rollout-state rollout-state-" + data.state.toLowerCase();
    }
    if (reason) { reason.textContent = data.reason; }
    var total = data.wave_sizes.length;
    var current = data.state === "COMPLETED" ? total : Math.min(data.current_wave + 1, total);
    setText("rollout-wave", "wave " + current + " of " + total);
    setText("rollout-done", String(data.hosts_done));
    setText("rollout-total", String(data.hosts_total));
    showButtons(data.state);
  }

  function applyBar(bar, wave) {
    var gate = gateRate(wave.hosts);
    var over = breached(wave.failed, wave.hosts);
    var rate = wave.failure_rate;
    bar.setAttribute("aria-valuenow", String(Math.round(rate * 1000) / 10));
    bar.setAttribute("aria-valuetext", percentText(rate) + " failed (" + wave.failed + " of " +
      wave.hosts + ")" + (gate === null ? "" : "; gate " + percentText(gate)));
    bar.setAttribute("data-rate", String(Math.round(rate * 10000) / 10000));
    bar.setAttribute("data-failed", String(wave.failed));
    bar.setAttribute("data-breached", over ? "true" : "false");
    bar.classList.toggle("rate-bar-breached", over);
    var fill = bar.querySelector(".rate-bar-fill");
    if (fill) { fill.setAttribute("width", String(Math.round(BAR_WIDTH * rate * 100) / 100)); }
    var text = bar.querySelector(".rate-bar-text");
    if (text) {
      text.textContent = percentText(rate) + " failed" +
        (gate === null ? "" : " \u00b7 gate " + percentText(gate));
    }
  }

  function applyWaves(data) {
    var waiting = 0;
    var done = 0;
    var terminal = TERMINAL.indexOf(data.state) >= 0;
    data.waves_detail.forEach(function (wave) {
      waiting += (wave.counts.waiting || 0) + (wave.counts.pending || 0);
      done += wave.counts.succeeded || 0;
      var row = document.getElementById("wave-" + (wave.index + 1));
      if (!row) { return; }
      row.classList.toggle("wave-current", !terminal && wave.index === data.current_wave);
      Array.prototype.forEach.call(row.querySelectorAll(".wave-count"), function (cell) {
        var n = wave.counts[cell.getAttribute("data-state")] || 0;
        cell.textContent = String(n);
        cell.classList.toggle("muted", n === 0);
      });
      var bar = document.getElementById("wave-" + (wave.index + 1) + "-bar");
      if (bar) { applyBar(bar, wave); }
    });
    root.setAttribute("data-not-started", String(waiting));
    root.setAttribute("data-migrated", String(done));
  }

  function link(href, text) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  }

  function applyHosts(hosts) {
    var rows = {};
    Array.prototype.forEach.call(document.querySelectorAll("#rollout-hosts tr[data-agent-id]"),
      function (row) { rows[row.getAttribute("data-agent-id")] = row; });
    hosts.forEach(function (host) {
      var row = rows[host.agent_id];
      if (!row) { return; }
      var state = row.querySelector(".host-state");
      if (state) {
        state.textContent = host.state;
        state.className = "host-state host-state-" + host.state;
      }
      var run = row.querySelector(".host-run");
      if (run && host.run_id && !run.firstChild) {
        run.appendChild(link("/runs/" + encodeURIComponent(host.run_id), "run"));
      }
      var error = row.querySelector(".host-error");
      if (error) {
        error.textContent = "";
        if (host.error) {
          var span = document.createElement("span");
          span.className = "error-text";
          span.textContent = host.error;
          error.appendChild(span);
        }
      }
      var revert = row.querySelector(".host-revert");
      if (revert) {
        revert.textContent = "";
        if (host.revert_run_id) {
          revert.appendChild(link("/runs/" + encodeURIComponent(host.revert_run_id), host.revert_state));
        } else {
          revert.textContent = host.revert_state;
        }
      }
    });
  }

  function applyTransitions(transitions) {
    var list = document.getElementById("rollout-transitions");
    if (!list || list.children.length === transitions.length) { return; }
    list.textContent = "";
    transitions.forEach(function (t) {
      var item = document.createElement("li");
      var time = document.createElement("time");
      time.setAttribute("datetime", t.at);
      time.textContent = t.at.slice(0, 19).replace("T", " ") + " UTC";
      var by = document.createElement("strong");
      by.className = "transition-by";
      by.textContent = t.by;
      var move = document.createElement("span");
      move.className = "transition-move";
      move.textContent = (t.from_state || "created") + " \u2192 " + t.to_state;
      var why = document.createElement("span");
      why.className = "transition-reason";
      why.textContent = t.reason;
      item.appendChild(time);
      item.appendChild(document.createTextNode(" "));
      item.appendChild(by);
      item.appendChild(document.createTextNode(": "));
      item.appendChild(move);
      item.appendChild(document.createTextNode(" "));
      item.appendChild(why);
      list.appendChild(item);
    });
  }

  function apply(data) {
    applyWaves(data);
    applyState(data);
    applyHosts(data.hosts || []);
    applyTransitions(data.transitions || []);
  }

  // --- polling

  function poll() {
    fetch(apiUrl, {
      headers: { "Accept": "application/json" },
      credentials: "same-origin",
      cache: "no-store"
    })
      .then(function (response) {
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.json();
      })
      .then(function (data) {
        apply(data);
        if (TERMINAL.indexOf(data.state) >= 0) {
          showLive("offline", "Finished: " + data.state);
          return;
        }
        showLive("live", "Live");
        window.setTimeout(poll, INTERVAL_MS);
      })
      .catch(function () {
        showLive("reconnecting", "Reconnecting\u2026");
        window.setTimeout(poll, INTERVAL_MS * 3);
      });
  }

  showButtons(root.getAttribute("data-state"));
  if (root.getAttribute("data-terminal") !== "true" && apiUrl && typeof window.fetch === "function") {
    poll();
  }
}());
