from __future__ import annotations

import pytest
import yaml

from nnforge.errors import ConfigError
from nnforge.recipes import load_recipe, parse_recipe

GOOD = {
    "name": "t",
    "model": {"name": "minilm"},
    "data": {"dataset": "shakespeare-genre", "options": {"passages_per_play": 4}},
    "steps": ["baselines", {"finetune": {"train": {"epochs": 1}}}, {"quantize": {"scheme": "int8"}}, "evaluate"],
}


def test_builtin_quickstart_validates():
    rec = load_recipe("quickstart")
    assert [s.name for s in rec.steps] == ["baselines", "finetune", "quantize", "evaluate", "gate", "explain",
                                            "report"]
    assert rec.metadata.intended_purpose and len(rec.sha256) == 64
    assert rec.to_dict()["metadata"]["record_inputs"] is False  # served inputs: only their sha256, unless allowed
    allowed = load_recipe("quickstart", ["metadata.record_inputs=true"])
    assert allowed.to_dict()["metadata"]["record_inputs"] is True  # what `nnforge serve --record-inputs` checks


def test_all_problems_are_reported_together_with_paths():
    doc = {**GOOD, "seed": "zero", "steps": ["baselines", {"finetune": {"train": {"epochs": 0}}},
                                             {"quantise": {}}, {"quantize": {"scheme": "int5", "bits": 4}}]}
    with pytest.raises(ConfigError) as exc:
        parse_recipe(doc)
    msg = str(exc.value)
    assert "5 problem(s)" in msg
    assert "'seed'" in msg
    assert "steps[1].train.epochs" in msg
    assert "steps[2]: unknown step 'quantise' (did you mean 'quantize'?)" in msg
    assert "steps[3].scheme" in msg and "'int8'" in msg
    assert "steps[3].bits: unknown field" in msg


def test_model_needs_exactly_one_source():
    with pytest.raises(ConfigError, match="exactly one of name, hf_dir, safetensors"):
        parse_recipe({**GOOD, "model": {"name": "minilm", "hf_dir": "/x"}})
    with pytest.raises(ConfigError, match="needs 'architecture'"):
        parse_recipe({**GOOD, "model": {"safetensors": "w.safetensors"}})


def test_unknown_top_level_field():
    with pytest.raises(ConfigError, match="modle: unknown field"):
        parse_recipe({**GOOD, "modle": {}})


def test_malformed_yaml_names_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nsteps:\n  - finetune: {epochs: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: malformed YAML"):
        load_recipe(str(f))


def test_a_recipe_that_is_not_utf8_names_the_line(tmp_path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes(b"name: x\ndescription: na\xefve\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml:2: not UTF-8 text"):
        load_recipe(str(f))


def test_missing_recipe_file_and_unknown_builtin(tmp_path):
    with pytest.raises(ConfigError, match="no such recipe file"):
        load_recipe(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="did you mean 'quickstart'"):
        load_recipe("quickstrat")


def test_overrides_reach_nested_step_options(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(GOOD))
    rec = load_recipe(str(f), ["steps[1].train.epochs=3", "data.options.passages_per_play=7", "steps[3].repeats=5"])
    assert rec.steps[1].config.train.epochs == 3
    assert rec.data.options["passages_per_play"] == 7
    assert rec.steps[3].config.repeats == 5
    with pytest.raises(ConfigError, match="expected key=value"):
        load_recipe(str(f), ["steps"])
