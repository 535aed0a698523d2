// Run page log tools (docs/dashboard.md, "Logs"): search with highlighted matches and
// next/previous, collapse per step, wrap / no wrap. Lines are rendered by the server and by
// live.js; this module only marks and shows them, so it never renders a line itself.
(function () {
  "use strict";
  var logs = document.getElementById("logs");
  var form = document.getElementById("log-search");
  if (!logs || !form) return;
  var input = document.getElementById("log-search-input");
  var count = document.getElementById("log-search-count");
  var wrap = document.getElementById("log-wrap");
  var marks = [];
  var current = -1;
  var dirty = false;
  form.hidden = false;

  // --- collapse per step ---------------------------------------------------------------
  logs.querySelectorAll("[data-role=collapse]").forEach(function (button) {
    var box = document.getElementById(button.getAttribute("aria-controls"));
    if (!box) return;
    button.hidden = false;
    button.addEventListener("click", function () {
      setCollapsed(button, box, button.getAttribute("aria-expanded") === "true");
    });
  });
  function setCollapsed(button, box, collapsed) {
    box.hidden = collapsed;
    button.setAttribute("aria-expanded", collapsed ? "false" : "true");
    button.textContent = collapsed ? "Expand" : "Collapse";
  }

  // --- earlier windows ------------------------------------------------------------------
  // The page shows the last lines of each log (dashboard/logs.py); earlier ones come a window
  // at a time, rendered by the server (the same template tag as the page).
  function loadEarlier(box) {
    var button = box.querySelector("[data-role=earlier]");
    var first = Number(box.dataset.firstOffset) || 0;
    if (!button || first <= 0) return Promise.resolve(false);
    button.disabled = true;
    var url = box.dataset.windowUrl + "?before=" + first;
    return fetch(url, { credentials: "same-origin" }).then(function (res) {
      if (!res.ok) throw new Error(url + ": HTTP " + res.status);
      var newFirst = Number(res.headers.get("X-Log-First"));
      return res.text().then(function (html) {
        var height = box.scrollHeight;
        button.insertAdjacentHTML("afterend", html);
        box.scrollTop += box.scrollHeight - height; // keep the lines being read in place
        box.dataset.firstOffset = String(newFirst);
        if (newFirst <= 0) button.remove();
        else {
          button.disabled = false;
          button.textContent = "Show earlier lines (" + newFirst + " before these)";
        }
        dirty = Boolean(input.value);
        return newFirst < first;
      });
    });
  }
  logs.addEventListener("click", function (e) {
    var button = e.target.closest("[data-role=earlier]");
    if (button) loadEarlier(button.closest(".log"));
  });
  // A link to a line that is not loaded yet: load earlier windows until it is.
  function revealTarget() {
    var target = /^#s(\d+)-L(\d+)$/.exec(location.hash);
    if (!target || document.getElementById(location.hash.slice(1))) return;
    var section = logs.querySelector('[data-step-id="' + target[1] + '"]');
    var box = section && section.querySelector(".log");
    if (!box) return;
    (function until() {
      var line = document.getElementById(location.hash.slice(1));
      if (line) {
        line.classList.add("highlight");
        line.scrollIntoView({ block: "center" });
        return;
      }
      loadEarlier(box).then(function (more) {
        if (more) until();
      });
    })();
  }
  window.addEventListener("hashchange", revealTarget);
  revealTarget();

  // --- wrap ---------------------------------------------------------------------------
  wrap.addEventListener("change", function () {
    logs.classList.toggle("log-nowrap", !wrap.checked);
  });

  // --- search -------------------------------------------------------------------------
  function clearMarks() {
    marks.forEach(function (mark) {
      var parent = mark.parentNode;
      if (!parent) return;
      parent.replaceChild(document.createTextNode(mark.textContent), mark);
      parent.normalize();
    });
    marks = [];
    current = -1;
    pinned = null;
  }

  function textNodes(line) {
    var out = [];
    var walker = document.createTreeWalker(line, NodeFilter.SHOW_TEXT, {
      acceptNode: function (node) {
        var el = node.parentElement;
        if (el && (el.closest(".log-lineno") || el.closest(".log-time"))) return NodeFilter.FILTER_REJECT;
        return NodeFilter.FILTER_ACCEPT;
      },
    });
    while (walker.nextNode()) out.push(walker.currentNode);
    return out;
  }

  function search() {
    clearMarks();
    dirty = false;
    var needle = input.value.toLowerCase();
    if (!needle) {
      count.textContent = "";
      return;
    }
    logs.querySelectorAll(".log-line").forEach(function (line) {
      textNodes(line).forEach(function (node) {
        var text = node.nodeValue;
        var lower = text.toLowerCase();
        var at = lower.indexOf(needle);
        if (at < 0) return;
        var frag = document.createDocumentFragment();
        var from = 0;
        while (at >= 0) {
          if (at > from) frag.appendChild(document.createTextNode(text.slice(from, at)));
          var mark = document.createElement("mark");
          mark.className = "log-match";
          mark.textContent = text.slice(at, at + needle.length);
          frag.appendChild(mark);
          marks.push(mark);
          from = at + needle.length;
          at = lower.indexOf(needle, from);
        }
        if (from < text.length) frag.appendChild(document.createTextNode(text.slice(from)));
        node.parentNode.replaceChild(frag, node);
      });
    });
    count.textContent = marks.length ? marks.length + " matches" : "no match";
    if (marks.length) go(0);
  }

  function go(index) {
    if (dirty) search();
    if (!marks.length) return;
    if (current >= 0 && marks[current]) marks[current].classList.remove("log-match-current");
    current = (index + marks.length) % marks.length;
    var mark = marks[current];
    mark.classList.add("log-match-current");
    var section = mark.closest("[data-step-id]");
    var button = section && section.querySelector("[data-role=collapse]");
    var box = section && section.querySelector(".log");
    if (button && box && box.hidden) setCollapsed(button, box, false);
    mark.scrollIntoView({ block: "center" });
    pin(mark);
    count.textContent = current + 1 + " of " + marks.length;
  }

  // Keep the current match where the reader sees it when the page changes above it (the gate
  // panel appearing, a live update growing a card). The browser's scroll anchoring keeps the
  // first visible element in place, which may be above the change (the Details card above the
  // gate panel), so the logs would be pushed out of view under the reader.
  var pinned = null;
  function pin(mark) {
    pinned = { mark: mark, top: mark.getBoundingClientRect().top };
  }
  function inView(top) {
    return top >= 0 && top < window.innerHeight;
  }
  window.addEventListener("scroll", function () {
    if (pinned) pinned.top = pinned.mark.getBoundingClientRect().top; // the reader's new place
  });
  if (window.ResizeObserver) {
    new ResizeObserver(function () {
      if (!pinned || !pinned.mark.isConnected || !inView(pinned.top)) return;
      var moved = pinned.mark.getBoundingClientRect().top - pinned.top;
      if (Math.abs(moved) >= 1) window.scrollBy(0, moved);
    }).observe(document.body);
  }

  var timer = null;
  input.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(search, 200);
  });
  input.addEventListener("keydown", function (e) {
    if (e.key !== "Enter") return;
    e.preventDefault();
    clearTimeout(timer);
    if (dirty || !marks.length) search();
    else go(current + (e.shiftKey ? -1 : 1));
  });
  form.addEventListener("submit", function (e) {
    e.preventDefault();
  });
  document.getElementById("log-search-next").addEventListener("click", function () {
    go(current + 1);
  });
  document.getElementById("log-search-prev").addEventListener("click", function () {
    go(current - 1);
  });
  // New lines (live.js) are searched on the next step through the matches.
  new MutationObserver(function () {
    if (input.value) dirty = true;
  }).observe(logs, { childList: true, subtree: true });
})();
