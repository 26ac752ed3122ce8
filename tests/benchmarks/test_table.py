"""benchmarks/table.py renders every summary value (lists and nested objects too) and each _ci beside its value."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "table.py"


def _table_module():
    spec = importlib.util.spec_from_file_location("nnforge_bench_table", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_value_is_rendered_and_intervals_sit_beside_their_values(tmp_path):
    table = _table_module()
    summary = {"int4_speedup_11008": 5.3776, "int4_speedup_11008_ci": [5.1, 5.61], "lose_to_adamw": ["sgd", "lion"],
               "best_lr_inside_grid": {"adamw": True, "muon": False}, "failed": [], "peer": None,
               "note": "a | b", "fp32_acc": 0.47}
    doc = {"mode": "full", "date": "2026-12-06T15:00:00+00:00", "summary": summary,
           "machine": {"cpu": "AMD EPYC", "threads": 2, "l3_cache_mb": 33.554}}
    (tmp_path / "quantize_kernels.json").write_text(json.dumps(doc))
    (tmp_path / "quantize_kernels.quick.json").write_text(json.dumps({**doc, "mode": "quick"}))
    (tmp_path / "optim_x.json").write_text(json.dumps({**doc, "mode": "quick"}))
    rows = table.table(tmp_path).splitlines()
    assert len(rows) == 3  # header, rule, the one full-mode file
    row = rows[2]
    assert "int4_speedup_11008 5.378 [5.1, 5.61]" in row and "int4_speedup_11008_ci" not in row
    assert "lose_to_adamw [sgd, lion]" in row and "failed []" in row
    assert "best_lr_inside_grid.adamw yes" in row and "best_lr_inside_grid.muon no" in row
    assert "peer –" in row and "note a \\| b" in row and "fp32_acc 0.47" in row
    assert "AMD EPYC, 2 threads, L3 33.55 MB" in row and "2026-12-06" in row


def test_an_interval_without_its_value_is_shown_as_a_value():
    table = _table_module()
    assert table.figures({"x_ci": [1.0, 2.0]}) == ["x_ci [1, 2]"]
    assert table.fmt([{"a": 1.23456}, (1, 2)]) == "[{a 1.235}, [1, 2]]"
