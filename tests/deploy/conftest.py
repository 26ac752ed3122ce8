"""Deploy fixtures: the small quickstart run's int8 model exported once per session with the CLI, as a web page."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def exported_web(small_run, tmp_path_factory):
    """``nnforge export RUN --variant int8 --format web`` on a copy of the small run (its own ledger).
    Returns ``(work folder, run folder, export folder, exit code)``; tests must not modify them."""
    import os
    import shutil

    from nnforge.cli import main
    from nnforge.deploy.web import find_ort_web
    from nnforge.errors import MissingDependencyError

    try:
        find_ort_web()
    except MissingDependencyError as exc:  # make setup installs it (npm ci): CI must not skip silently
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {exc}")
        pytest.skip(str(exc))
    folder, run_dir = small_run
    work = tmp_path_factory.mktemp("exported") / "work"
    shutil.copytree(folder, work)
    run = work / "runs" / run_dir.name
    out = work / "web-int8"
    rc = main(["export", str(run), "--variant", "int8", "--format", "web", "--verify", "24", "--out", str(out),
               "--ledger", str(work / ".nnforge" / "ledger.db"), "--json"])
    return work, run, out, rc
