// Clearway's Rego mode for CodeMirror 6: a small line-by-line tokenizer (a "legacy mode"
// run by StreamLanguage), written for Clearway. It knows Rego v1's lexical structure
// (comments, strings, raw strings, numbers, keywords, operators, brackets) and marks the
// rule heads that a Clearway gate reads (deny, warn, violation and their _suffixes) and the
// `input` / `data` roots. It does not parse: OPA does that when the policy is saved.
import { StreamLanguage } from "@codemirror/language";

const KEYWORDS = new Set([
  "package", "import", "as", "default", "else", "every", "some", "in", "if", "contains",
  "not", "with",
]);
const ATOMS = new Set(["true", "false", "null"]);
const ROOTS = new Set(["input", "data", "future", "rego"]);
const GATE_RULE = /^(deny|warn|violation)(_[A-Za-z0-9_]*)?$/;
const IDENT = /^[A-Za-z_][A-Za-z0-9_]*/;
const NUMBER = /^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/;
const OPERATOR = /^(?::=|==|!=|<=|>=|[=<>+\-*\/%&|:])/;

function readString(stream, state) {
  // Inside "...": stop at the closing quote; a backslash escapes the next character.
  let escaped = false;
  let ch;
  while ((ch = stream.next()) != null) {
    if (ch === '"' && !escaped) {
      state.inString = false;
      return "string";
    }
    escaped = !escaped && ch === "\\";
  }
  state.inString = false; // Rego strings do not span lines; the next line starts fresh
  return "string";
}

function readRaw(stream, state) {
  // `raw strings` may span lines and have no escapes.
  if (stream.skipTo("`")) {
    stream.next();
    state.inRaw = false;
  } else {
    stream.skipToEnd();
    state.inRaw = true;
  }
  return "string-2";
}

export const regoLanguage = StreamLanguage.define({
  name: "rego",
  startState() {
    return { inString: false, inRaw: false, afterDot: false, lineStart: true };
  },
  copyState(state) {
    return { ...state };
  },
  token(stream, state) {
    if (stream.sol()) state.lineStart = true;
    if (state.inRaw) return readRaw(stream, state);
    if (stream.eatSpace()) return null;
    const atLineStart = state.lineStart;
    state.lineStart = false;
    const afterDot = state.afterDot;
    state.afterDot = false;

    if (stream.peek() === "#") {
      stream.skipToEnd();
      return "comment";
    }
    if (stream.eat('"')) {
      state.inString = true;
      return readString(stream, state);
    }
    if (stream.eat("`")) return readRaw(stream, state);
    if (stream.match(NUMBER)) return "number";
    const word = stream.match(IDENT);
    if (word) {
      const name = word[0];
      if (afterDot) return "property";
      if (KEYWORDS.has(name)) return "keyword";
      if (ATOMS.has(name)) return "atom";
      if (ROOTS.has(name)) return "builtin";
      if (atLineStart && GATE_RULE.test(name)) return "def";
      if (atLineStart) return "variableName.definition";
      if (stream.match(/^\s*\(/, false)) return "variableName.function";
      return "variable";
    }
    if (stream.eat(".")) {
      state.afterDot = true;
      return "punctuation";
    }
    if (stream.match(/^[{}()[\]]/)) return "bracket";
    if (stream.match(OPERATOR)) return "operator";
    if (stream.eat(/[,;]/)) return "punctuation";
    stream.next();
    return null;
  },
  languageData: {
    commentTokens: { line: "#" },
    closeBrackets: { brackets: ["(", "[", "{", '"', "`"] },
    indentOnInput: /^\s*[}\]]$/,
  },
});
