"""A weights file is untrusted input: its nnforge spec rebuilds the module, so a malformed one is refused."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import save_file

from nnforge.errors import ConfigError, IntegrityError
from nnforge.models import build
from nnforge.recipes.runs import load_variant

SPEC = {"base": {"architecture": "digits-cnn", "options": {}}, "kind": "module", "num_classes": 10, "transforms": []}


def _write(path, spec):
    state = {k: v.contiguous() for k, v in build("digits-cnn").state_dict().items()}
    save_file(state, str(path), metadata={"nnforge.spec": json.dumps(spec)})
    return path


def test_a_well_formed_file_loads(tmp_path):
    model, spec = load_variant(_write(tmp_path / "m.safetensors", SPEC))
    assert type(model).__name__ == "DigitsCNN" and spec["num_classes"] == 10


@pytest.mark.parametrize(("change", "error", "message"), [
    ({"base": [1]}, IntegrityError, "'base' must be an object"),
    ({"transforms": 5}, IntegrityError, "'transforms' a list"),
    ({"num_classes": "many"}, IntegrityError, "num_classes 'many'"),
    ({"transforms": [{"type": "nosuch"}]}, ConfigError, "transforms\\[0\\]"),
    ({"base": {"architecture": "nosuch"}}, ConfigError, "unknown architecture"),
    ({"base": {"architecture": "digits-cnn", "options": {"bogus": 1}}}, ConfigError, "bogus"),
    ({"base": {"architecture": "digits-cnn", "options": {"channels": [4, 8]}}}, IntegrityError, "does not fit"),
])
def test_a_malformed_spec_is_refused_with_a_clear_error(tmp_path, change, error, message):
    with pytest.raises(error, match=message):
        load_variant(_write(tmp_path / "m.safetensors", {**SPEC, **change}))


def test_a_run_reads_only_its_own_files(tmp_path):
    from nnforge.recipes.runs import load_run

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    _write(tmp_path / "outside.safetensors", SPEC)
    _write(run / "model.safetensors", SPEC)
    (run / "config.json").write_text(json.dumps({"run_id": "r1", "variants": {"fp32": "model.safetensors",
                                                                              "int8": "../../outside.safetensors"}}))
    with pytest.raises(IntegrityError, match="no ledger records run r1"):
        load_run(run)  # nothing vouches for these files
    r = load_run(run, allow_modified=True)
    assert type(r.model("fp32")).__name__ == "DigitsCNN"
    with pytest.raises(IntegrityError, match="points outside the run folder"):
        r.model("int8")
