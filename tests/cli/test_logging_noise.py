"""The CLI hides third-party import-time warnings a user cannot act on (torchao's missing CUDA libraries, torch's
pytree deprecations), unless --debug asks for everything."""

from __future__ import annotations

import logging

import pytest

from nnforge.cli import _common


@pytest.mark.parametrize("debug", [False, True])
def test_noisy_third_party_loggers_are_quiet_unless_debugging(monkeypatch, debug):
    monkeypatch.setitem(_common.STATE, "debug", debug)
    before = {name: logging.getLogger(name).level for name in _common.NOISY_LOGGERS}
    try:
        for name in before:
            logging.getLogger(name).setLevel(logging.NOTSET)
        _common.setup_logging(verbose=False)
        child = logging.getLogger("torchao.kernel.intmm")  # where "Detected no triton" comes from
        assert child.isEnabledFor(logging.WARNING) is debug
        assert logging.getLogger("torch.utils._pytree").isEnabledFor(logging.WARNING) is debug
        assert logging.getLogger("nnforge.cli").isEnabledFor(logging.WARNING)
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)
