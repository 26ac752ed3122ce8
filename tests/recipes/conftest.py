"""Fixtures shared by the recipe tests: one small quickstart run per session (read-only: copy it to modify)."""

from __future__ import annotations

import pytest

from nnforge.cli import main

SETTINGS = ["data.options.passages_per_play=6", "data.max_train=48", "steps[1].train.epochs=1",
            "steps[3].repeats=3"]
# a few passages per play cannot reach the shipped suite's accuracy bars: the small run gates on the
# checks that do not depend on the amount of data
SMALL_SUITE = """
name: small-gate
reference: fp32
slices: [class]
checks:
  - flip_rate <= 0.25
  - size_mb <= 100
"""


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, shakespeare_texts):
    import os

    folder = tmp_path_factory.mktemp("qs")
    (folder / "small-gate.yaml").write_text(SMALL_SUITE)
    old = os.getcwd()
    os.chdir(folder)
    try:
        rc = main(["run", "quickstart", "--json", *sum((["--set", s] for s in SETTINGS), []),
                   "--set", f"data.options.path={shakespeare_texts}", "--set", "steps[4].suite=small-gate.yaml"])
    finally:
        os.chdir(old)
    assert rc == 0
    run_dir = next((folder / "runs").iterdir())
    return folder, run_dir


@pytest.fixture
def small_run_copy(small_run, tmp_path, monkeypatch):
    """A copy of the small run's folder (runs/ and .nnforge/) as the working folder: tests may write to it.
    Returns ``(work folder, the run's folder inside it)``."""
    import shutil

    folder, run_dir = small_run
    work = tmp_path / "work"
    shutil.copytree(folder, work)
    monkeypatch.chdir(work)
    return work, work / "runs" / run_dir.name
