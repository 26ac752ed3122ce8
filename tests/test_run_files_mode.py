"""Run files follow the umask (0644 under the usual 022), as files a program writes with open() do: the atomic
writes once created them 0600 through mkstemp, so a team's shared runs folder was unreadable to the team."""

from __future__ import annotations

import os
import stat

import pytest
from torch import nn

from nnforge import runs
from nnforge.models.checkpoint import save_weights


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_run_files_are_created_with_the_umask(tmp_path, umask):
    runs.write_metrics(tmp_path, {"acc": 0.5})
    save_weights(nn.Linear(2, 2), tmp_path / "model.safetensors", {"base": {}})
    for name in ("metrics.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "model.safetensors"]  # no temp left
