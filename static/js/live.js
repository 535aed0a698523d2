/* Clearway live updates — one small module, no build step.
 *
 * - One websocket to /ws/events/, reconnected with exponential backoff (capped at 10 s).
 * - #live-indicator shows the connection: class "ok" + "live", or "down" + "reconnecting…".
 * - Every message is re-dispatched on `document` as a `clearway:event` CustomEvent
 *   (detail = the event); `clearway:open` (detail.reconnect) fires on every connect.
 * - Overview / wallboard: run.updated, stage.updated and access.changed (the user's access
 *   changed; the server already follows the new set of pipelines) refresh the
 *   [data-live-refresh] partials through htmx (debounced); gate.updated refreshes the
 *   approvals badge.
 * - Run page (#run[data-run-id]): subscribes to the run, applies status events through data
 *   attributes, appends log lines at their offsets, and tracks the run's `seq`. On a gap or a
 *   reconnect it re-reads /api/v1/runs/<id>/ and every log from its last offset, so the page
 *   always ends equal to the database (the stream may drop messages; the database may not).
 *
 * Log lines are rendered by ansiToHtml, the twin of dashboard_tags.ansi_to_html: escape
 * first, then SGR colours as .ansi-* spans; every other escape sequence is dropped.
 */
(function () {
  "use strict";

  var MAX_DELAY = 10000;
  var socket = null;
  var attempt = 0;
  var everOpen = false;

  // --- connection -----------------------------------------------------------------------

  function indicator(state) {
    var el = document.getElementById("live-indicator");
    if (!el) return;
    el.classList.toggle("ok", state === "ok");
    el.classList.toggle("down", state === "down");
    el.textContent = state === "ok" ? "live" : state === "down" ? "reconnecting…" : "connecting…";
    el.title = state === "ok" ? "Live updates are on" : "Live updates are reconnecting";
  }

  function emit(name, detail) {
    document.dispatchEvent(new CustomEvent(name, { detail: detail }));
  }

  function connect() {
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/events/";
    var ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      schedule();
      return;
    }
    socket = ws;
    ws.addEventListener("open", function () {
      attempt = 0;
      indicator("ok");
      var reconnect = everOpen;
      everOpen = true;
      emit("clearway:open", { reconnect: reconnect });
    });
    ws.addEventListener("message", function (msg) {
      var event;
      try {
        event = JSON.parse(msg.data);
      } catch (err) {
        return;
      }
      if (event && typeof event === "object") emit("clearway:event", event);
    });
    ws.addEventListener("close", function () {
      if (socket === ws) socket = null;
      indicator("down");
      schedule();
    });
  }

  function schedule() {
    var base = Math.min(MAX_DELAY, 500 * Math.pow(2, attempt));
    attempt += 1;
    var delay = Math.min(MAX_DELAY, base * (0.75 + Math.random() * 0.5));
    setTimeout(connect, delay);
  }

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  function isOpen() {
    return !!socket && socket.readyState === WebSocket.OPEN;
  }

  function debounce(fn, wait) {
    var timer = null;
    return function () {
      clearTimeout(timer);
      timer = setTimeout(fn, wait);
    };
  }

  function htmxTrigger(el, name) {
    if (el && window.htmx) window.htmx.trigger(el, name);
  }

  // --- overview, wallboard, badge ---------------------------------------------------------

  var refreshPartials = debounce(function () {
    document.querySelectorAll("[data-live-refresh]").forEach(function (el) {
      htmxTrigger(el, "cw-refresh");
    });
  }, 700);

  var refreshGates = debounce(function () {
    htmxTrigger(document.body, "cw-gate");
  }, 400);

  document.addEventListener("clearway:event", function (e) {
    var type = e.detail.type;
    if (type === "run.updated" || type === "stage.updated" || type === "access.changed") refreshPartials();
    var status = e.detail.data && e.detail.data.status;
    if (type === "gate.updated" || (type === "run.updated" && ["waiting", "canceled", "blocked"].indexOf(status) >= 0)) {
      refreshGates();
    }
  });
  document.addEventListener("clearway:open", function (e) {
    if (e.detail.reconnect) {
      refreshPartials();
      refreshGates();
    }
  });

  // --- ANSI -> HTML (twin of dashboard/templatetags/dashboard_tags.py) --------------------

  var SGR = /\x1b\[([0-9;]*)m/g;
  var OTHER = /\x1b\[[0-9;?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?/g;
  var CONTROL = /[\x00-\x08\x0b-\x1f\x7f]/g;
  var ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;" };

  function escapeHtml(text) {
    return text.replace(/[&<>"']/g, function (c) {
      return ESCAPES[c];
    });
  }

  function cleanLine(line) {
    line = line.replace(/\r+$/, "");
    var cr = line.lastIndexOf("\r");
    return cr >= 0 ? line.slice(cr + 1) : line;
  }

  function applySgr(params, state) {
    var codes = params ? params.split(";").map(function (c) { return c ? parseInt(c, 10) : 0; }) : [0];
    for (var i = 0; i < codes.length; i++) {
      var code = codes[i];
      if (code === 0) {
        for (var key in state) delete state[key];
      } else if (code === 1) {
        state.bold = true;
        delete state.dim;
      } else if (code === 2) {
        state.dim = true;
        delete state.bold;
      } else if (code === 3) state.italic = true;
      else if (code === 4) state.underline = true;
      else if (code === 22) {
        delete state.bold;
        delete state.dim;
      } else if (code === 23) delete state.italic;
      else if (code === 24) delete state.underline;
      else if ((code >= 30 && code <= 37) || (code >= 90 && code <= 97)) state.fg = code;
      else if (code === 39) delete state.fg;
      else if (code === 38 || code === 48) {
        if (codes[i + 1] === 5) i += 2;
        else if (codes[i + 1] === 2) i += 4;
      }
    }
  }

  function classesOf(state) {
    var out = [];
    if (state.fg !== undefined) out.push("ansi-" + state.fg);
    ["bold", "dim", "italic", "underline"].forEach(function (flag) {
      if (state[flag]) out.push("ansi-" + flag);
    });
    return out.join(" ");
  }

  function emitText(out, text, state) {
    text = text.replace(OTHER, "").replace(CONTROL, "");
    if (!text) return;
    text = escapeHtml(text);
    var classes = classesOf(state);
    out.push(classes ? '<span class="' + classes + '">' + text + "</span>" : text);
  }

  function ansiToHtml(line) {
    line = cleanLine(line);
    var out = [];
    var state = {};
    var pos = 0;
    var match;
    SGR.lastIndex = 0;
    while ((match = SGR.exec(line)) !== null) {
      emitText(out, line.slice(pos, match.index), state);
      applySgr(match[1], state);
      pos = SGR.lastIndex;
    }
    emitText(out, line.slice(pos), state);
    return out.join("");
  }

  function lineParts(line) {
    var space = line.indexOf(" ");
    var stamp = space >= 0 ? line.slice(0, space) : line;
    var rest = space >= 0 ? line.slice(space + 1) : "";
    if (stamp.length >= 20 && /^\d{4}/.test(stamp) && stamp.slice(-1) === "Z" && stamp.indexOf("T") >= 0) {
      var stderr = rest.indexOf("[stderr] ") === 0;
      return { time: stamp, text: stderr ? rest.slice(9) : rest, stderr: stderr };
    }
    return { time: "", text: line, stderr: false };
  }

  // --- time --------------------------------------------------------------------------------

  function compact(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + "s";
    var minutes = Math.floor(seconds / 60);
    seconds = seconds % 60;
    if (minutes < 60) return minutes + "m " + String(seconds).padStart(2, "0") + "s";
    var hours = Math.floor(minutes / 60);
    minutes = minutes % 60;
    if (hours < 48) return hours + "h " + String(minutes).padStart(2, "0") + "m";
    return Math.floor(hours / 24) + "d " + (hours % 24) + "h";
  }

  function tickElapsed() {
    document.querySelectorAll("[data-elapsed]").forEach(function (el) {
      var started = el.dataset.started;
      if (!started) return;
      var end = el.dataset.finished ? Date.parse(el.dataset.finished) : Date.now();
      var start = Date.parse(started);
      if (!isNaN(start) && !isNaN(end)) el.textContent = compact((end - start) / 1000);
    });
  }

  function utc(iso) {
    if (!iso) return "—";
    var d = new Date(iso);
    return isNaN(d) ? "—" : d.toISOString().slice(0, 19).replace("T", " ");
  }

  // --- the run page ------------------------------------------------------------------------

  var TERMINAL_RUN = ["succeeded", "failed", "canceled", "blocked"];
  // Twin of dashboard_tags.REASON_STATUSES: a reason is shown while it explains the status.
  var REASON_STATUSES = ["waiting", "failed", "blocked", "canceled", "skipped"];

  function reasonFor(status, reason) {
    return REASON_STATUSES.indexOf(status) >= 0 ? reason || "" : "";
  }

  function truncate(text, length) {
    return text.length > length ? text.slice(0, length - 1) + "…" : text;
  }

  function runPage(root) {
    var runId = Number(root.dataset.runId);
    var api = root.dataset.api;
    var logApi = root.dataset.logApi;
    var lastSeq = Number(root.dataset.seq) || 0;
    var needResync = false;
    var lastEventAt = Date.now();
    var logs = new Map();
    var syncing = false;
    var syncAgain = false;
    var gatePending = false;
    var finalSync = false;

    root.querySelectorAll("[data-step-id]").forEach(function (section) {
      var box = section.querySelector(".log");
      if (!box) return;
      var st = { box: box, next: Number(box.dataset.nextOffset) || 0, stick: true, fetching: null, again: false };
      logs.set(Number(section.dataset.stepId), st);
      box.addEventListener("scroll", function () {
        // Follow the output only while the reader is at the bottom; scrolling up stops it,
        // scrolling back down resumes it.
        st.stick = box.scrollHeight - box.scrollTop - box.clientHeight < 8;
      });
      if (!/^#s\d+-L\d+$/.test(location.hash)) box.scrollTop = box.scrollHeight;
    });

    function getJSON(url) {
      return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(
        function (res) {
          if (!res.ok) throw new Error(url + ": HTTP " + res.status);
          return res.json();
        }
      );
    }

    // Apply a status unless the element already shows something newer (its data-seq).
    function setStatus(el, status, seq) {
      if (!el || !status) return false;
      if (seq !== undefined && seq !== null) {
        if (seq <= Number(el.dataset.seq || 0)) return false;
        el.dataset.seq = String(seq);
      }
      var styled = false;
      Array.prototype.slice.call(el.classList).forEach(function (c) {
        if (c.indexOf("status-") === 0) {
          el.classList.remove(c);
          styled = true;
        }
      });
      if (styled) el.classList.add("status-" + status);
      el.dataset.status = status;
      if (el.classList.contains("status")) el.textContent = status; // the element is a pill
      var pill = el.classList.contains("status") ? null : el.querySelector("[data-role=status]");
      if (pill) {
        pill.className = "status status-" + status;
        pill.textContent = status;
      }
      return true;
    }

    function setTimes(el, started, finished) {
      var t = el && el.querySelector("[data-elapsed]");
      if (!t) return;
      t.dataset.started = started || "";
      t.dataset.finished = finished || "";
      if (!started) t.textContent = "";
    }

    function setText(el, text) {
      if (el) el.textContent = text || "";
    }

    function applyRun(data, seq) {
      var pill = document.getElementById("run-status");
      if (!setStatus(pill, data.status, seq)) return;
      root.dataset.status = data.status;
      setText(document.getElementById("run-reason"), reasonFor(data.status, data.reason));
      var duration = document.getElementById("run-duration");
      if (duration) {
        duration.dataset.started = data.started_at || "";
        duration.dataset.finished = data.finished_at || "";
      }
      setText(document.getElementById("run-started"), utc(data.started_at));
      setText(document.getElementById("run-finished"), utc(data.finished_at));
      var terminal = TERMINAL_RUN.indexOf(data.status) >= 0;
      root.querySelectorAll("[data-show-when]").forEach(function (el) {
        el.hidden = (el.dataset.showWhen === "terminal") !== terminal;
      });
      if (data.status === "waiting" || terminal) refreshGatePanel();
      if (terminal && !finalSync) {
        finalSync = true;
        setTimeout(resync, 1500); // confirm the final state and the complete logs
      }
    }

    function applyStage(data, seq) {
      var el = root.querySelector('[data-stage-id="' + data.id + '"]');
      if (!setStatus(el, data.status, seq)) return;
      var reason = el.querySelector("[data-role=reason]");
      if (reason) {
        reason.title = reasonFor(data.status, data.reason);
        reason.textContent = truncate(reason.title, 90);
      }
      setTimes(el.querySelector(".stage-meta"), data.started_at, data.finished_at);
      if (data.status === "waiting" || data.status === "blocked") refreshGatePanel();
    }

    function applyStep(data, seq) {
      var section = root.querySelector('[data-step-id="' + data.id + '"]');
      var item = root.querySelector('[data-graph-step="' + data.id + '"]');
      if (setStatus(item, data.status, seq)) setTimes(item, data.started_at, data.finished_at);
      if (!setStatus(section, data.status, seq)) return;
      setTimes(section.querySelector(".card-header"), data.started_at, data.finished_at);
      setText(section.querySelector("[data-role=exit-code]"), data.exit_code === null || data.exit_code === undefined ? "" : "exit " + data.exit_code);
      setText(section.querySelector("[data-role=error]"), data.error);
    }

    function lineElement(stepId, number, raw) {
      var parts = lineParts(raw);
      var div = document.createElement("div");
      div.className = "log-line" + (parts.stderr ? " log-stderr" : "");
      div.id = "s" + stepId + "-L" + number;
      var html = '<a class="log-lineno" href="#' + div.id + '">' + number + "</a>";
      if (parts.time) {
        html += '<span class="log-time" title="' + escapeHtml(parts.time) + '">' + escapeHtml(parts.time.slice(11, 19)) + "</span> ";
      }
      div.innerHTML = html + ansiToHtml(parts.text); // every piece is escaped above
      return div;
    }

    // Append `lines` that start at `offset`; lines before the step's next offset are
    // duplicates and skipped. Returns false when lines are missing before `offset`.
    function appendLines(stepId, offset, lines) {
      var st = logs.get(stepId);
      if (!st) return true;
      if (offset > st.next) return false;
      var skip = st.next - offset;
      if (skip >= lines.length) return true;
      var empty = st.box.querySelector(".log-empty");
      if (empty) empty.remove();
      var stick = st.stick;
      var frag = document.createDocumentFragment();
      for (var i = skip; i < lines.length; i++) frag.appendChild(lineElement(stepId, offset + i + 1, lines[i]));
      st.box.appendChild(frag);
      st.next = offset + lines.length;
      st.box.dataset.nextOffset = String(st.next);
      if (stick) st.box.scrollTop = st.box.scrollHeight;
      return true;
    }

    function fetchLog(stepId) {
      var st = logs.get(stepId);
      if (!st) return Promise.resolve();
      if (st.fetching) {
        st.again = true;
        return st.fetching;
      }
      st.fetching = (async function () {
        try {
          for (var round = 0; round < 10000; round++) {
            st.again = false;
            var from = st.next;
            var res = await getJSON(logApi + "?step=" + stepId + "&offset=" + from);
            appendLines(stepId, from, res.lines || []);
            if (!(res.lines && res.lines.length) && !st.again) break;
          }
        } finally {
          st.fetching = null;
        }
      })();
      return st.fetching;
    }

    async function resync() {
      if (syncing) {
        syncAgain = true;
        return;
      }
      syncing = true;
      try {
        do {
          syncAgain = false;
          var detail = await getJSON(api);
          var seq = Number(detail.event_seq) || 0;
          applyRun(detail, seq);
          var fetches = [];
          (detail.stages || []).forEach(function (stage) {
            applyStage(stage, seq);
            (stage.steps || []).forEach(function (step) {
              applyStep(step, seq);
              var st = logs.get(step.id);
              if (st && step.log_lines > st.next) fetches.push(fetchLog(step.id));
            });
          });
          if (seq > lastSeq) lastSeq = seq;
          await Promise.all(fetches);
          refreshGatePanel();
          refreshGates();
        } while (syncAgain);
      } catch (err) {
        setTimeout(resync, 3000);
      } finally {
        syncing = false;
      }
    }

    // The gate panel is an htmx partial. Never swap it under someone typing a comment: wait
    // until focus leaves the panel (typed text is carried over the swap, see below).
    function refreshGatePanel() {
      var panel = document.getElementById("gate-panel");
      if (!panel) return;
      if (panel.contains(document.activeElement) && document.activeElement !== panel) {
        gatePending = true;
        return;
      }
      gatePending = false;
      htmxTrigger(panel, "cw-gate");
    }

    document.addEventListener("focusout", function (e) {
      var panel = document.getElementById("gate-panel");
      if (gatePending && panel && !panel.contains(e.relatedTarget)) setTimeout(refreshGatePanel, 0);
    });

    var carried = null;
    document.body.addEventListener("htmx:beforeSwap", function (e) {
      var target = e.detail.target;
      if (!target || target.id !== "gate-panel") return;
      carried = null;
      var verb = e.detail.requestConfig && e.detail.requestConfig.verb;
      if (verb !== "get") return;
      carried = {};
      target.querySelectorAll("textarea[id]").forEach(function (t) {
        if (t.value) carried[t.id] = t.value;
      });
    });
    document.body.addEventListener("htmx:afterSettle", function () {
      if (!carried) return;
      Object.keys(carried).forEach(function (id) {
        var t = document.getElementById(id);
        if (t && !t.value) t.value = carried[id];
      });
      carried = null;
    });

    function subscribe() {
      send({ subscribe: "run", id: runId });
    }

    // The page renders the first lines of each log; the rest comes over HTTP.
    logs.forEach(function (st, stepId) {
      if (Number(st.box.dataset.total) > st.next) fetchLog(stepId);
    });

    document.addEventListener("clearway:open", function (e) {
      if (e.detail.reconnect) needResync = true;
      subscribe();
    });

    document.addEventListener("clearway:event", function (e) {
      var ev = e.detail;
      if (ev.type === "subscribed") {
        if (ev.run !== runId) return;
        if (needResync || typeof ev.seq !== "number" || ev.seq > lastSeq) resync();
        needResync = false;
        return;
      }
      if (ev.run !== runId || typeof ev.seq !== "number") return;
      lastEventAt = Date.now();
      var data = ev.data || {};
      if (ev.type === "run.updated") applyRun(data, ev.seq);
      else if (ev.type === "stage.updated") applyStage(data, ev.seq);
      else if (ev.type === "step.updated") applyStep(data, ev.seq);
      else if (ev.type === "gate.updated") refreshGatePanel();
      else if (ev.type === "log") {
        if (!appendLines(data.step, data.offset, data.lines || [])) fetchLog(data.step);
      }
      if (ev.seq > lastSeq + 1) resync();
      if (ev.seq > lastSeq) lastSeq = ev.seq;
    });

    // A message lost at the very end of a run leaves no gap to notice: while the run is
    // active and the stream is quiet, re-read now and then.
    setInterval(function () {
      if (TERMINAL_RUN.indexOf(root.dataset.status) >= 0) return;
      if (isOpen() && Date.now() - lastEventAt > 30000) {
        lastEventAt = Date.now();
        resync();
      }
    }, 10000);

    return { resync: resync };
  }

  // --- start ---------------------------------------------------------------------------------

  function start() {
    if (!document.getElementById("live-indicator")) return; // not logged in: no live updates
    var root = document.getElementById("run");
    if (root && root.dataset.runId) window.Clearway.run = runPage(root);
    setInterval(tickElapsed, 1000);
    indicator("connecting");
    connect();
  }

  window.Clearway = { send: send, isOpen: isOpen, ansiToHtml: ansiToHtml, compact: compact };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
