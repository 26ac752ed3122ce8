"""Regenerate the README's performance table from the committed full-mode results JSON.

    python benchmarks/table.py          # rewrites the block between the markers in README.md
    python benchmarks/table.py --smoke  # renders the table from every results file, writes nothing

Only full-mode results are used; each row quotes every figure of one results file's summary (lists and
nested objects included; a ratio with its 95% interval as ``int4_speedup_11008 5.38 [5.1, 5.6]``) with the
machine and date they were measured on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- performance-table:begin -->", "<!-- performance-table:end -->"


def fmt(v: Any) -> str:
    """One value, compactly: yes/no, 4 significant digits, [a, b], {k v, …}; '|' escaped for Markdown."""
    if isinstance(v, bool):
        out = "yes" if v else "no"
    elif v is None:
        out = "–"
    elif isinstance(v, float):
        out = f"{v:.4g}"
    elif isinstance(v, (list, tuple)):
        out = "[" + ", ".join(fmt(x) for x in v) + "]"
    elif isinstance(v, dict):
        out = "{" + ", ".join(f"{k} {fmt(x)}" for k, x in v.items()) + "}"
    else:
        out = str(v)
    return out.replace("|", "\\|").replace("\n", " ")


def _is_interval(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)


def figures(summary: dict[str, Any], prefix: str = "") -> list[str]:
    """``key value`` for every entry, nested objects as dotted keys, ``key_ci`` shown after ``key``'s value."""
    out: list[str] = []
    for k, v in summary.items():
        if k.endswith("_ci") and k[:-3] in summary and _is_interval(v):
            continue  # shown beside its value
        if isinstance(v, dict) and v:
            out += figures(v, f"{prefix}{k}.")
            continue
        ci = summary.get(f"{k}_ci")
        interval = f" [{fmt(ci[0])}, {fmt(ci[1])}]" if _is_interval(ci) else ""
        out.append(f"{prefix}{k} {fmt(v)}{interval}")
    return out


def table(results: Path = RESULTS) -> str:
    rows = ["| benchmark | figures (summary) | machine | date |", "|---|---|---|---|"]
    for path in sorted(results.glob("*.json")):
        if path.name.endswith(".quick.json"):
            continue
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("mode") != "full":
            continue
        m = doc.get("machine", {})
        threads = m.get("threads", m.get("torch_threads", "?"))
        l3 = f", L3 {fmt(m['l3_cache_mb'])} MB" if m.get("l3_cache_mb") else ""
        rows.append(f"| `{path.stem}` | {'; '.join(figures(doc.get('summary', {})))} | {fmt(m.get('cpu', '?'))}, "
                    f"{threads} threads{l3} | {str(doc.get('date', ''))[:10]} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="render the table, write nothing")
    args = ap.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        print(f"README.md has no {BEGIN} … {END} block", file=sys.stderr)
        return 1
    rendered = table()
    if args.smoke:
        print(f"smoke: rendered {rendered.count(chr(10)) - 1} rows from {RESULTS}; README.md not written")
        return 0
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{rendered}\n{END}{tail}", encoding="utf-8")
    print("README.md performance table updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
