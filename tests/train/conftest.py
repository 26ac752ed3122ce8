"""Tests of nnforge.train run tiny models: one intra-op thread is fastest on a shared CPU."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield
