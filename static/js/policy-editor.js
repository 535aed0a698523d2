/* The policy editor, on top of editor.js (gutter, Tab, links in the error list rendered with
 * the page): compile errors that arrive later in an htmx result (Run tests, Dry run) get the
 * same treatment — their links jump to the line and column, and their lines are marked in the
 * gutter until the editor re-numbers it. New results are scrolled into view below the sticky
 * navigation bar. */
(function () {
  "use strict";

  function goTo(area, line, column) {
    var lines = area.value.split("\n");
    var pos = 0;
    for (var i = 0; i < Math.min(line - 1, lines.length); i++) pos += lines[i].length + 1;
    pos += Math.max(0, Math.min((column || 1) - 1, (lines[line - 1] || "").length));
    area.focus();
    area.setSelectionRange(pos, pos);
    var lineHeight = parseFloat(getComputedStyle(area).lineHeight) || 20;
    area.scrollTop = Math.max(0, (line - 4) * lineHeight);
  }

  document.addEventListener("click", function (e) {
    var link = e.target.closest && e.target.closest("#policy-results .line-errors a[data-line]");
    var area = document.getElementById("id_source");
    if (!link || !area) return;
    e.preventDefault();
    goTo(area, Number(link.dataset.line), Number(link.dataset.column));
  });

  function reveal(results) {
    var nav = document.querySelector(".nav");
    var offset = (nav ? nav.offsetHeight : 0) + 8;
    var top = results.getBoundingClientRect().top;
    if (top >= offset && top < window.innerHeight / 2) return; // already in view
    var still = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    window.scrollTo({ top: window.scrollY + top - offset, behavior: still ? "auto" : "smooth" });
  }

  document.addEventListener("htmx:afterSwap", function (e) {
    if (e.target && e.target.id === "policy-results") reveal(e.target);
    var gutter = document.getElementById("source-gutter");
    if (!gutter) return;
    document.querySelectorAll("#policy-results .line-errors a[data-line]").forEach(function (a) {
      var span = gutter.children[Number(a.dataset.line) - 1];
      if (span) {
        span.classList.add("error-line");
        span.title = "problem on line " + a.dataset.line;
      }
    });
  });
})();
