"""Text that ships with Python itself: out-of-distribution material for English-text models, offline.

Two sets, drawn from the standard library's top-level modules (``sysconfig.get_paths()["stdlib"]``):

- ``stdlib-code``: windows of 4 non-empty source lines joined by spaces, one every 40 lines;
- ``stdlib-docstrings``: module, class and function docstrings of more than 8 words (first 60 words),
  modern technical English.

Their exact content depends on the Python version installed; the sizes of the pools drawn from are
returned so results can say what they measured on.
"""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

import numpy as np

__all__ = ["stdlib_texts"]


def stdlib_texts(n: int | None = 500, seed: int = 0) -> tuple[dict[str, list[str]], dict[str, int]]:
    """``({"stdlib-code": [...], "stdlib-docstrings": [...]}, pool sizes)`` with ``n`` of each (seeded; None: all)."""
    code: list[str] = []
    docs: list[str] = []
    folder = sysconfig.get_paths()["stdlib"]
    for f in sorted(Path(folder).glob("*.py")):
        text = f.read_text(encoding="utf-8", errors="ignore")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        code += [" ".join(ln.strip() for ln in lines[i : i + 4]) for i in range(0, len(lines) - 4, 40)]
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module)):
                d = ast.get_docstring(node)
                if d and len(d.split()) > 8:
                    docs.append(" ".join(d.split()[:60]))
    rng = np.random.default_rng(seed)

    def pick(xs: list[str]) -> list[str]:
        if n is None or n >= len(xs):
            return list(xs)
        return [xs[i] for i in sorted(rng.choice(len(xs), n, replace=False))]

    return ({"stdlib-code": pick(code), "stdlib-docstrings": pick(docs)},
            {"stdlib-code": len(code), "stdlib-docstrings": len(docs)})


