"""The web dashboard (``nnforge dashboard``): runs and their reports, lineage, ledger verification and the review
queue with approve/override/out-of-scope/escalate forms, server-rendered HTML with no script and no external
resource. Each person logs in with their own name and token (``nnforge users add``).

Only :func:`create_app` needs the ``dashboard`` extra (FastAPI); it is imported on first use, so importing this
package stays cheap.

>>> from nnforge.govern.dashboard import create_app
>>> app = create_app(".nnforge/ledger.db", "runs")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nnforge.govern.dashboard._security import SESSION_IDLE_S, SESSION_MAX_AGE_S

if TYPE_CHECKING:
    from nnforge.govern.dashboard.app import create_app

__all__ = ["create_app", "SESSION_IDLE_S", "SESSION_MAX_AGE_S"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from nnforge.govern.dashboard.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
