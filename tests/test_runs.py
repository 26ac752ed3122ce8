"""The run-folder schema (nnforge.runs): what it writes reads back; what is wrong is named by file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnforge import runs
from nnforge.errors import ConfigError, IntegrityError


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "runs" / "20261128-000000-abcdef"
    folder.mkdir(parents=True)
    runs.write_config(folder, {"run_id": folder.name, "status": "running", "variants": {}, "label_names": ["a", "b"]})
    return folder


def test_config_metrics_sections_round_trip(run_dir: Path) -> None:
    runs.write_metrics(run_dir, {"fp32_acc": 0.75, "int8_acc": 0.5})
    runs.write_sections(run_dir, {"data": {"name": "x"}})
    cfg = runs.update_config(run_dir, variants={"fp32": "model-fp32.safetensors"}, final_variant="fp32",
                             status="finished")
    assert runs.read_config(run_dir) == cfg
    assert runs.read_config(run_dir)["status"] == "finished"
    assert runs.read_metrics(run_dir) == {"fp32_acc": 0.75, "int8_acc": 0.5}
    assert runs.read_sections(run_dir) == {"data": {"name": "x"}}
    assert not list(run_dir.glob(".*"))  # the temporary files of the atomic writes are gone


def test_absent_metrics_and_sections_read_empty(run_dir: Path) -> None:
    assert runs.read_metrics(run_dir) == {}
    assert runs.read_sections(run_dir) == {}


def test_find_run_by_path_and_id(run_dir: Path) -> None:
    assert runs.find_run(run_dir) == run_dir
    assert runs.find_run(run_dir.name, run_dir.parent) == run_dir
    with pytest.raises(ConfigError, match="not a run folder or run id"):
        runs.find_run("nope", run_dir.parent)
    with pytest.raises(ConfigError, match="no config.json"):
        runs.read_config(run_dir.parent)


def test_a_wrong_field_is_named_with_its_file(run_dir: Path) -> None:
    (run_dir / "config.json").write_text(json.dumps({"run_id": "r", "variants": {"fp32": {}}, "status": "done"}))
    with pytest.raises(IntegrityError) as info:
        runs.read_config(run_dir)
    msg = str(info.value)
    assert str(run_dir / "config.json") in msg
    assert "'variants'" in msg and "'status'" in msg  # every problem, not only the first


def test_final_variant_must_be_a_variant(run_dir: Path) -> None:
    with pytest.raises(IntegrityError, match="final_variant"):
        runs.update_config(run_dir, variants={"fp32": "m.safetensors"}, final_variant="int8")
    assert runs.read_config(run_dir)["variants"] == {}  # nothing was written


def test_not_an_object_and_not_json_are_refused(run_dir: Path) -> None:
    (run_dir / "metrics.json").write_text("[1, 2]")
    with pytest.raises(IntegrityError, match=r"metrics\.json: expected a JSON object, found list"):
        runs.read_metrics(run_dir)
    (run_dir / "sections.json").write_text("{not json")
    with pytest.raises(IntegrityError, match=r"sections\.json: not valid JSON"):
        runs.read_sections(run_dir)


def test_a_symlink_out_of_the_run_folder_is_refused(run_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps({"fp32_acc": 1.0}))
    (run_dir / "metrics.json").symlink_to(outside)
    with pytest.raises(IntegrityError, match="inside the run folder"):
        runs.read_metrics(run_dir)
    assert runs.run_file(run_dir, "metrics.json") is None
    assert runs.run_file(run_dir, "../../elsewhere.json") is None
    assert runs.run_file(run_dir, "config.json") == (run_dir / "config.json").resolve()


def test_variant_path_stays_inside(run_dir: Path) -> None:
    assert runs.variant_path(run_dir, "fp32", "model-fp32.safetensors") == run_dir / "model-fp32.safetensors"
    with pytest.raises(IntegrityError, match="points outside the run folder"):
        runs.variant_path(run_dir, "fp32", "../other/model.safetensors")


def test_runtime_columns_follow_measured_figures() -> None:
    assert runs.with_runtime_columns(["fp32", "int8"], {"int8-native_acc": 0.9}) == ["fp32", "int8", "int8-native"]
    assert runs.with_runtime_columns(["fp32"], {"fp32_acc": 0.9}) == ["fp32"]
