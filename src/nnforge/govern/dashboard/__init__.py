"""The web dashboard (``nnforge dashboard``): runs and their reports, lineage, ledger verification and the review
queue with approve/override forms, server-rendered HTML with no script and no external resource.

Only :func:`create_app` needs the ``dashboard`` extra (FastAPI); it is imported on first use, so importing this
package, or creating a token, stays cheap.

>>> from nnforge.govern.dashboard import create_app, new_token
>>> token = new_token(".nnforge/dashboard.token")  # doctest: +SKIP
>>> app = create_app(".nnforge/ledger.db", "runs", ".nnforge/dashboard.token")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nnforge.govern.dashboard._security import DEFAULT_TOKEN_FILE, check_token, new_token, token_fingerprint

if TYPE_CHECKING:
    from nnforge.govern.dashboard.app import create_app

__all__ = ["create_app", "new_token", "check_token", "token_fingerprint", "DEFAULT_TOKEN_FILE"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from nnforge.govern.dashboard.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
