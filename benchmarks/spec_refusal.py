"""How long refusing a hostile pipeline document takes (issue 19's "expensive validation").

    .venv/bin/python benchmarks/spec_refusal.py

No database or server: orchestrator.spec is Django-free. Each document is 250-256 KiB, the
size limit; the goal is a refusal in under 1 s of CPU, with a short error list. Prints one
JSON document (CPU seconds per document, errors, error text size)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator import spec  # noqa: E402

HEAD = "name: x\nstages: [{name: a, steps: [{name: s, run: x}]}]\n"
STAGE = "  - {name: s%d, steps: [{name: a, run: x}], %s}\n"


def documents() -> dict[str, str]:
    wide = ", ".join(f"x{i}: 1" for i in range(190))
    return {
        "26,112 unknown top-level keys": HEAD + "".join(f"k{i:05d}: 1\n" for i in range(26_112)),
        "99 stages of 190 unknown keys (node cap)": "name: big\nstages:\n"
        + "".join(STAGE % (n, wide) for n in range(99)),
        "190 unknown keys (error cap)": HEAD + "".join(f"k{i:05d}: 1\n" for i in range(190)),
    }


def main() -> None:
    results = []
    for label, text in documents().items():
        started = time.process_time()
        try:
            spec.parse_pipeline(text[: spec.MAX_DOCUMENT_BYTES])
            errors: list = []
        except spec.SpecError as exc:
            errors = exc.errors
        cpu = time.process_time() - started
        results.append(
            {
                "document": label,
                "bytes": len(text[: spec.MAX_DOCUMENT_BYTES].encode()),
                "cpu_s": round(cpu, 4),
                "errors": len(errors),
                "error_text_bytes": len(json.dumps(errors)),
                "goal_met": cpu < 1.0 and len(errors) <= spec.MAX_ERRORS + 1,
            }
        )
    print(json.dumps({"benchmark": "spec refusal", "results": results}, indent=2))


if __name__ == "__main__":
    main()
