"""Governance built on the ledger: the review queue of predictions, the promotion gate, the run report, the
generated documents (model card, AI Act Art. 13 instructions for use, Annex IV draft) and the web dashboard.

Everything here reads the ledger (:mod:`nnforge.ledger`) and the run folders (:mod:`nnforge.runs`) and records
its own decisions as ledger events; nothing here changes a model.

>>> from nnforge.govern import ReviewQueue, promote, write_documents, write_report
>>> with ReviewQueue.open(".nnforge/ledger.db") as q:  # doctest: +SKIP
...     q.stats()

The dashboard (``nnforge.govern.dashboard``) needs the ``dashboard`` extra and is imported on its own.
"""

from __future__ import annotations

from nnforge.govern.documents import (
    DOCUMENTS,
    FORMATS,
    TODO,
    Document,
    build_documents,
    render_document,
    write_documents,
)
from nnforge.govern.promotion import STAGES, PromotionRefused, SuiteRecord, promote, promotions, revoke
from nnforge.govern.report import RenderedReport, recorded_metrics, render_report, write_checked_report, write_report
from nnforge.govern.review import DECISIONS, REASONS, STATUSES, ReviewItem, ReviewPick, ReviewQueue, review_rules
from nnforge.govern.users import ROLES, AccessDenied, User, UserStore

__all__ = [
    "ReviewQueue",
    "ReviewItem",
    "ReviewPick",
    "review_rules",
    "REASONS",
    "STATUSES",
    "DECISIONS",
    "User",
    "UserStore",
    "ROLES",
    "AccessDenied",
    "promote",
    "revoke",
    "promotions",
    "SuiteRecord",
    "PromotionRefused",
    "STAGES",
    "render_report",
    "write_report",
    "write_checked_report",
    "recorded_metrics",
    "RenderedReport",
    "DOCUMENTS",
    "FORMATS",
    "TODO",
    "Document",
    "build_documents",
    "render_document",
    "write_documents",
]
