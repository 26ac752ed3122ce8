"""Regenerate the README's performance table from the committed full-mode results JSON.

    python benchmarks/table.py          # rewrites the block between the markers in README.md

Only full-mode results are used; each row quotes the summary figures of one results file with the
machine and date they were measured on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- performance-table:begin -->", "<!-- performance-table:end -->"


def _fmt(v: object) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested summaries ({"far": {"stdlib-code": {"best_auroc": …}}}) as dotted keys."""
    out: list[tuple[str, object]] = []
    for k, v in d.items():
        out += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    return out


def table() -> str:
    rows = ["| benchmark | figures (summary) | machine | date |", "|---|---|---|---|"]
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        if path.name.endswith(".quick.json"):
            continue
        doc = json.loads(path.read_text())
        if doc.get("mode") != "full":
            continue
        summary = doc.get("summary", {})
        figures = "; ".join(f"{k} {_fmt(v)}" for k, v in _flat(summary) if not isinstance(v, list))
        m = doc.get("machine", {})
        rows.append(f"| `{path.stem}` | {figures} | {m.get('cpu', '?')}, {m.get('torch_threads', '?')} threads | "
                    f"{str(doc.get('date', ''))[:10]} |")
    return "\n".join(rows)


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md has no {BEGIN} … {END} block", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table()}\n{END}{tail}")
    print("README.md performance table updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
