/* The policy editor's Rego source as a code editor: CodeMirror 6 (static/vendor/
 * codemirror-6.min.js, global ClearwayCodeMirror) with Rego highlighting, bracket matching
 * and closing, line numbers and undo, on top of the plain textarea.
 *
 * Progressive enhancement: the <textarea name="source"> stays the form field. Without
 * JavaScript (or if the bundle fails to load) it is the editor, with editor.js's gutter.
 * With it, the textarea is hidden and kept equal to the editor's text on every change, so a
 * normal submit, an htmx post (Run tests, Dry run) and "Add as a test case" all send what
 * is in the editor.
 *
 * Compile errors: the lines in the textarea's data-error-lines are marked (`cm-error-line`
 * on the line and its number); links in the error lists (those rendered with the page and
 * those arriving in htmx results) put the cursor at their line and column. */
(function () {
  "use strict";

  var CM = window.ClearwayCodeMirror;
  // CodeMirror writes its layout styles into a <style> element; under the strict CSP it needs
  // the request's nonce, which this script tag carries (governance/middleware.py).
  var nonce = (document.currentScript && document.currentScript.nonce) || "";
  if (!CM) return;

  function setup(area) {
    var wrap = area.closest(".code-editor-wrap") || area.parentNode;
    var described = area.getAttribute("aria-describedby") || "";
    var labelled = area.getAttribute("aria-labelledby") || "";
    var initialErrors = (area.dataset.errorLines || "").split(",").filter(Boolean).map(Number);
    var host = document.createElement("div");
    host.className = "cm-host";
    if (area.getAttribute("aria-invalid") === "true") host.classList.add("has-error");

    var view = new CM.EditorView({
      parent: host,
      state: CM.EditorState.create({
        doc: area.value,
        extensions: [
          CM.regoExtensions(),
          CM.EditorView.cspNonce.of(nonce),
          CM.EditorView.contentAttributes.of({
            "aria-labelledby": labelled,
            "aria-describedby": described,
            "aria-invalid": area.getAttribute("aria-invalid") || "false",
            tabindex: "0",
            spellcheck: "false",
            autocapitalize: "off",
            autocorrect: "off",
          }),
          CM.EditorView.updateListener.of(function (update) {
            if (update.docChanged) {
              area.value = update.state.doc.toString();
              area.dispatchEvent(new Event("input", { bubbles: true }));
            }
          }),
        ],
      }),
    });
    view.dispatch({ effects: CM.setErrorLines.of(initialErrors) });
    wrap.parentNode.insertBefore(host, wrap);
    wrap.hidden = true;
    wrap.classList.add("cm-replaced");
    area.tabIndex = -1;
    area.classList.add("cm-enhanced");
    view.dom.dataset.language = "rego";

    // Before any submit, the textarea holds the editor's text (it does already: belt and
    // braces for a submit fired in the same task as the last keystroke).
    if (area.form) {
      area.form.addEventListener("submit", function () {
        area.value = view.state.doc.toString();
      });
      area.form.addEventListener("htmx:configRequest", function (e) {
        if (e.detail && e.detail.parameters && area.name) {
          var params = e.detail.parameters;
          var text = view.state.doc.toString();
          if (typeof params.set === "function") params.set(area.name, text);
          else params[area.name] = text;
        }
      });
    }

    function goTo(line, column) {
      var doc = view.state.doc;
      var n = Math.max(1, Math.min(line || 1, doc.lines));
      var target = doc.line(n);
      var pos = target.from + Math.max(0, Math.min((column || 1) - 1, target.length));
      view.dispatch({
        selection: { anchor: pos },
        effects: CM.EditorView.scrollIntoView(pos, { y: "center" }),
      });
      view.focus();
    }

    // Error links, rendered with the page or arriving with an htmx result. Capture phase:
    // this runs instead of editor.js's handlers, which would focus the hidden textarea.
    document.addEventListener(
      "click",
      function (e) {
        var link = e.target.closest && e.target.closest(".line-errors a[data-line]");
        if (!link) return;
        e.preventDefault();
        e.stopPropagation();
        goTo(Number(link.dataset.line), Number(link.dataset.column));
      },
      true
    );
    document.addEventListener("htmx:afterSwap", function (e) {
      if (!e.target || e.target.id !== "policy-results") return;
      var lines = [];
      e.target.querySelectorAll(".line-errors a[data-line]").forEach(function (a) {
        lines.push(Number(a.dataset.line));
      });
      if (lines.length) view.dispatch({ effects: CM.setErrorLines.of(lines) });
    });
    area.codeMirror = view; // for the browser tests and the console
  }

  function init() {
    document.querySelectorAll("textarea[data-code-language='rego']").forEach(setup);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
