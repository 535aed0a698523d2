// The CodeMirror 6 bundle Clearway vendors as static/vendor/codemirror-6.min.js: exactly
// what static/js/code-editor.js uses, exposed as the global `ClearwayCodeMirror`.
import { EditorState, StateEffect, StateField, RangeSetBuilder } from "@codemirror/state";
import {
  EditorView,
  Decoration,
  keymap,
  lineNumbers,
  highlightActiveLine,
  highlightActiveLineGutter,
  highlightSpecialChars,
  drawSelection,
  gutterLineClass,
  GutterMarker,
} from "@codemirror/view";
import {
  bracketMatching,
  indentOnInput,
  indentUnit,
  syntaxHighlighting,
} from "@codemirror/language";
import { defaultKeymap, history, historyKeymap, indentWithTab } from "@codemirror/commands";
import { closeBrackets, closeBracketsKeymap } from "@codemirror/autocomplete";
import { classHighlighter } from "@lezer/highlight";
import { regoLanguage } from "./rego.js";

export { EditorState, EditorView, regoLanguage };

// Lines with a compile error: `cm-error-line` on the line, `cm-error-line-number` on its
// number in the gutter. Set them with view.dispatch({effects: setErrorLines.of([21])}).
export const setErrorLines = StateEffect.define();

class ErrorMarker extends GutterMarker {
  get elementClass() {
    return "cm-error-line-number";
  }
}
const errorMarker = new ErrorMarker();
const errorLine = Decoration.line({ class: "cm-error-line" });

const errorLineField = StateField.define({
  create: () => [],
  update(lines, tr) {
    for (const effect of tr.effects) if (effect.is(setErrorLines)) return effect.value;
    return lines;
  },
});

function errorRanges(state, value) {
  const builder = new RangeSetBuilder();
  const lines = [...new Set(state.field(errorLineField))]
    .filter((n) => n >= 1 && n <= state.doc.lines)
    .sort((a, b) => a - b);
  for (const n of lines) {
    const from = state.doc.line(n).from;
    builder.add(from, from, value);
  }
  return builder.finish();
}

export function errorLines() {
  return [
    errorLineField,
    EditorView.decorations.compute([errorLineField, "doc"], (state) =>
      errorRanges(state, errorLine)
    ),
    gutterLineClass.compute([errorLineField, "doc"], (state) => errorRanges(state, errorMarker)),
  ];
}

// The editor's extensions: Rego highlighting through stable `tok-*` classes (styled in
// app.css, so nothing is coloured by injected styles), bracket matching and closing, undo
// history, Tab indents (Esc then Tab leaves the editor), line numbers.
export function regoExtensions() {
  return [
    lineNumbers(),
    highlightActiveLineGutter(),
    highlightSpecialChars(),
    history(),
    drawSelection(),
    indentOnInput(),
    indentUnit.of("\t"),
    EditorState.tabSize.of(2),
    syntaxHighlighting(classHighlighter),
    bracketMatching(),
    closeBrackets(),
    highlightActiveLine(),
    keymap.of([...closeBracketsKeymap, ...defaultKeymap, ...historyKeymap, indentWithTab]),
    regoLanguage,
    errorLines(),
  ];
}
