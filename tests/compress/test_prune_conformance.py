"""Every registered pruning method and criterion through one table of checks (the pruning side of
``test_method_conformance.py``, which covers kind ``"quantize"``).

The table is read from the registries (``transform_types("prune")`` with each config's defaults, and every
criterion of ``CRITERIA`` unstructured, N:M and global), so a method or criterion registered anywhere is
checked with no edit here. Each case prunes the same tiny model (already 2:4-sparse by magnitude for the
methods, so that a sparse format has zeros to store) and must:

- rebuild from its report's config: a skeleton built with ``skeleton=True`` loads the saved state strictly and
  computes bit-exactly what the pruned model does (``recipes.runs.rebuild`` does exactly this);
- report every module holding parameters, as changed or as skipped with a reason;
- state the sparsity of every changed module, and never claim bytes it does not save.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from _tiny import Tiny
from _tiny import conformance_ids as _ids
from _tiny import conformance_model as _model
from nnforge.compress import NMConfig, UnstructuredConfig, apply_, needs_calibration, prune_, transform_types
from nnforge.compress.prune.criteria import CRITERIA
from nnforge.config import CONFIG_TYPES, Config, load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads only wait on a busy machine


def _cases() -> list[Any]:
    cases = [pytest.param(CONFIG_TYPES.get(name)(), True, id=f"method-{name}") for name in transform_types("prune")]
    for name in CRITERIA.names():
        cases += [pytest.param(UnstructuredConfig(sparsity=0.6, criterion=name), False, id=f"criterion-{name}"),
                  pytest.param(NMConfig(n=4, m=8, criterion=name), False, id=f"criterion-{name}-4:8"),
                  pytest.param(UnstructuredConfig(sparsity=0.6, criterion=name, scope="global"), False,
                               id=f"criterion-{name}-global")]
    return cases


_DONE: dict[str, tuple[Tiny, Any]] = {}


def _pruned(cfg: Config, pre_pruned: bool) -> tuple[Tiny, Any]:
    key = json.dumps(cfg.to_dict(), sort_keys=True) + str(pre_pruned)
    if key not in _DONE:
        model = _model()
        if pre_pruned:
            prune_(model, NMConfig())
        inputs: dict[str, Any] = {"calibration": [_ids(8, seed=s) for s in range(4)]} if needs_calibration(cfg) else {}
        if getattr(type(cfg), "prunes_during_training", False):  # gradual: its schedule run through, no training
            inputs["train"] = lambda m, callbacks: _run_events(m, callbacks, getattr(cfg, "end_step", 1))
        _DONE[key] = model, prune_(model, cfg, **inputs)
    return _DONE[key]


def _run_events(model: torch.nn.Module, callbacks: list[Any], steps: int) -> None:
    """The training loop's events for ``steps`` steps, without the training (the schedule is what is checked)."""
    from types import SimpleNamespace

    from nnforge.train import Event

    state = SimpleNamespace(model=model, step=0)
    for event in (Event.FIT_START, *[Event.STEP_END] * steps, Event.FIT_END):
        state.step += event == Event.STEP_END
        for cb in callbacks:
            cb(event, state)


@pytest.mark.parametrize(("cfg", "pre_pruned"), _cases())
def test_rebuilds_bit_exactly_from_its_report_config(cfg: Config, pre_pruned: bool, tmp_path) -> None:
    model, report = _pruned(cfg, pre_pruned)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "m.safetensors"))
    skeleton = _model(seed=7)  # other weights: everything must come from the file
    apply_(skeleton, load_config(json.loads(json.dumps(report.config))), skeleton=True)
    skeleton.load_state_dict(load_file(str(tmp_path / "m.safetensors")), strict=True)
    ids = _ids(4)
    with torch.no_grad():
        assert torch.equal(skeleton(ids), model(ids))


@pytest.mark.parametrize(("cfg", "pre_pruned"), _cases())
def test_report_accounts_for_every_module_and_states_sparsity(cfg: Config, pre_pruned: bool) -> None:
    original = _model()
    holders = {n for n, m in original.named_modules() if n and any(True for _ in m.parameters(recurse=False))}
    _, report = _pruned(cfg, pre_pruned)
    changed = {c.name for c in report.changed}
    skipped = dict(report.skipped)
    assert changed, "nothing was pruned"
    assert changed | set(skipped) == holders, sorted(holders - changed - set(skipped))
    assert not changed & set(skipped) and all(reason.strip() for reason in skipped.values())
    for c in report.changed:
        assert re.search(r"sparsity|removed", c.detail), c.detail
        assert c.bytes_after <= c.bytes_before, c


@pytest.mark.parametrize("name", CRITERIA.names())
def test_criteria_meet_their_pattern_exactly(name: str) -> None:
    model, _ = _pruned(UnstructuredConfig(sparsity=0.6, criterion=name), False)
    per_row = CRITERIA.get(name).compare == "row"  # Wanda ranks each output row on its own
    assert int((model.fc1.weight == 0).sum()) == (128 * round(0.6 * 64) if per_row else round(0.6 * 128 * 64))
    model, _ = _pruned(NMConfig(n=4, m=8, criterion=name), False)
    assert ((model.fc2.weight.reshape(32, -1, 8) != 0).sum(-1) <= 4).all()
