"""Shared fixtures: offline Hugging Face, a per-test working folder, the Shakespeare texts."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shakespeare_texts():
    """The Shakespeare texts folder (fetched once into the user cache, sha256-checked)."""
    from nnforge.data.shakespeare import texts_dir

    return texts_dir()


@pytest.fixture(scope="session")
def minilm():
    """A fresh 3-class MiniLM classifier (loaded once per session; tests must not modify it)."""
    from nnforge.models import load

    return load("minilm", num_classes=3)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty folder so that runs/ and .nnforge/ land in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def one_torch_thread():
    """Tiny models run 10-100x faster without intra-op threads competing for a busy machine's cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
