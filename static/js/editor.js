/* The YAML editor of the pipeline pages: a line-number gutter that follows the textarea
 * (lines with errors stay marked), links from the error list to the line and column, and
 * Tab inserting two spaces (Esc, then Tab, moves focus on as usual). */
(function () {
  "use strict";

  function setup(wrap) {
    var area = wrap.querySelector("textarea");
    var gutter = wrap.querySelector(".code-gutter");
    if (!area || !gutter) return;
    var errorLines = (area.dataset.errorLines || "").split(",").filter(Boolean).map(Number);
    var escaped = false;

    function renderGutter() {
      var count = area.value.split("\n").length;
      if (gutter.childElementCount === count) return;
      var frag = document.createDocumentFragment();
      for (var n = 1; n <= count; n++) {
        var span = document.createElement("span");
        span.textContent = String(n);
        if (errorLines.indexOf(n) >= 0) {
          span.className = "error-line";
          span.title = "problem on line " + n;
        }
        frag.appendChild(span);
      }
      gutter.replaceChildren(frag);
      gutter.scrollTop = area.scrollTop;
    }

    area.addEventListener("input", renderGutter);
    area.addEventListener("scroll", function () {
      gutter.scrollTop = area.scrollTop;
    });
    area.addEventListener("keydown", function (e) {
      if (e.key === "Escape") {
        escaped = true;
        return;
      }
      if (e.key === "Tab" && !e.shiftKey && !e.altKey && !e.ctrlKey && !e.metaKey && !escaped) {
        e.preventDefault();
        var start = area.selectionStart;
        area.setRangeText("  ", start, area.selectionEnd, "end");
        renderGutter();
        return;
      }
      escaped = false;
    });

    function goTo(line, column) {
      var lines = area.value.split("\n");
      var pos = 0;
      for (var i = 0; i < Math.min(line - 1, lines.length); i++) pos += lines[i].length + 1;
      pos += Math.max(0, Math.min((column || 1) - 1, (lines[line - 1] || "").length));
      area.focus();
      area.setSelectionRange(pos, pos);
      var lineHeight = parseFloat(getComputedStyle(area).lineHeight) || 20;
      area.scrollTop = Math.max(0, (line - 4) * lineHeight);
      gutter.scrollTop = area.scrollTop;
    }

    document.querySelectorAll(".line-errors a[data-line]").forEach(function (link) {
      link.addEventListener("click", function (e) {
        e.preventDefault();
        goTo(Number(link.dataset.line), Number(link.dataset.column));
      });
    });
    renderGutter();
  }

  function init() {
    document.querySelectorAll(".code-editor-wrap").forEach(setup);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
