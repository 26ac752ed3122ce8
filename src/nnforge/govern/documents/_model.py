"""The shape of a generated document (sections of paragraphs, lists, tables of cited spans) and its rendering."""


from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnforge.errors import ConfigError, MissingDependencyError
from nnforge.ledger import Event, Verification

TODO = "TO BE COMPLETED BY THE PROVIDER"
DOCUMENTS = ("model-card", "instructions-for-use", "annex-iv")
FORMATS = ("md", "html")


@dataclass(frozen=True)
class Span:
    """A piece of text; a figure when ``seq`` names the event it came from (``derived``: from a run file
    written by that event's step, not stored in the event itself); a placeholder when ``todo``."""

    text: str
    seq: int | None = None
    hash: str = ""
    derived: bool = False
    todo: bool = False


@dataclass
class Block:
    """A paragraph (``spans``), a bullet list (``items``) or a table (``header`` + ``rows``)."""

    kind: str  # "para" | "list" | "table"
    spans: list[Span] = field(default_factory=list)
    items: list[list[Span]] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[list[Span]]] = field(default_factory=list)


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)

    def para(self, *parts: Span | str) -> Section:
        self.blocks.append(Block("para", spans=[_s(p) for p in parts]))
        return self

    def todo(self, hint: str) -> Section:
        self.blocks.append(Block("para", spans=[Span(TODO, todo=True), Span(f" — {hint}")]))
        return self

    def bullets(self, items: list[list[Span | str]]) -> Section:
        if items:
            self.blocks.append(Block("list", items=[[_s(p) for p in it] for it in items]))
        return self

    def table(self, header: list[str], rows: list[list[list[Span | str] | Span | str]]) -> Section:
        if rows:
            cells = [[[_s(p) for p in c] if isinstance(c, list) else [_s(c)] for c in row] for row in rows]
            self.blocks.append(Block("table", header=header, rows=cells))
        return self

    def sub(self, title: str) -> Section:
        s = Section(title)
        self.subsections.append(s)
        return s

    def is_empty(self) -> bool:
        return not self.blocks and all(s.is_empty() for s in self.subsections)


@dataclass
class Document:
    """One generated document, format-independent."""

    kind: str
    title: str
    run_id: str
    head: str
    head_seq: int
    verification: Verification
    ledger_location: str
    generated: str
    sections: list[Section]
    cited: list[Event]
    status: str = "finished"  # the run's final state: finished, failed, interrupted, running
    state: str = ""  # when it did not finish: where and why (said at the top of the document)
    altered: list[str] = field(default_factory=list)  # run files that differ from what the ledger recorded


def _s(p: Span | str) -> Span:
    return p if isinstance(p, Span) else Span(p)


def _num(value: Any, pattern: str = "{:.3f}") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return pattern.format(value)




def _md_escape(text: Any) -> str:
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
            .replace("\n", " "))


def render_document(doc: Document, fmt: str) -> str:
    """``doc`` as Markdown (``md``) or self-contained HTML (``html``); HTML autoescapes every value."""
    if fmt not in FORMATS:
        raise ConfigError(f"document format {fmt!r}: expected one of {', '.join(FORMATS)}")
    try:
        import jinja2
    except ImportError as exc:
        raise MissingDependencyError("documents need jinja2: pip install 'nnforge[report]'") from exc
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent.parent / "templates"),
                             autoescape=fmt == "html", undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["mdx"] = _md_escape
    return env.get_template(f"document.{fmt}.j2").render(doc=doc, todo=TODO)


