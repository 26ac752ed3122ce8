"""The dashboard shows what the ledger recorded: a run whose metrics.json or weights were edited after the run
shows as altered, with the recorded figures and never a value from the modified file; runs carry their status
(finished / failed / interrupted / altered)."""

from __future__ import annotations

import hashlib
import json

import pytest

pytest.importorskip("fastapi", reason="the dashboard extra (fastapi) is not installed")

from test_dashboard import RUN, _login, site  # noqa: E402,F401  (the site fixture: a run folder, ledger, users)

from nnforge.ledger import Ledger  # noqa: E402


@pytest.fixture
def board(site):  # noqa: F811
    return site


def _record_weights(board) -> None:
    """The run's weights as the ledger records them (a relative path and the file's real sha256), and its end."""
    data = (board["run_dir"] / "model-int8.safetensors").read_bytes()
    with Ledger.open(board["ledger"], actor="runner") as led:
        led.append("artifact.written", {"name": "model:int8", "path": "model-int8.safetensors",
                                        "sha256": hashlib.sha256(data).hexdigest()}, run=RUN)
        led.append("run.finished", {"metrics": {}}, run=RUN)


def test_an_edited_metrics_file_shows_as_altered_with_the_recorded_value(board):
    _record_weights(board)
    c = _login(board)
    assert '<td class="status">finished</td>' in c.get("/").text
    (board["run_dir"] / "metrics.json").write_text(json.dumps({"int8_acc": 0.99, "fp32_acc": 0.47}))
    home, page = c.get("/").text, c.get(f"/runs/{RUN}").text
    assert "altered" in home and "0.990" not in home and "0.465" in home
    assert 'id="altered"' in page and "0.99" not in page and "0.465" in page
    assert "metrics.json shows otherwise" in page


def test_flipped_weights_show_as_altered(board):
    _record_weights(board)
    path = board["run_dir"] / "model-int8.safetensors"
    path.write_bytes(bytes(b ^ 0xFF for b in path.read_bytes()))  # same size, every byte flipped
    c = _login(board)
    page = c.get(f"/runs/{RUN}").text
    assert 'id="altered"' in page and "model-int8.safetensors has sha256" in page
    assert '<span class="bad">altered</span>' in c.get("/").text


@pytest.mark.parametrize(("error", "status"), [("StepFailedError: boom", "failed"),
                                               ("KeyboardInterrupt: ", "interrupted")])
def test_failed_and_interrupted_runs_are_marked(board, error, status):
    with Ledger.open(board["ledger"], actor="runner") as led:
        led.append("run.failed", {"error": error}, run=RUN)
    assert f'<td class="status">{status}</td>' in _login(board).get("/").text


def test_a_run_the_ledger_did_not_record_shows_no_figure(board):
    other = board["run_dir"].parent / "20261129-000000-000000"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"run_id": other.name, "final_variant": "int8"}))
    (other / "metrics.json").write_text(json.dumps({"int8_acc": 0.777}))
    c = _login(board)
    assert "0.777" not in c.get("/").text and "0.777" not in c.get(f"/runs/{other.name}").text
    assert '<td class="status">unrecorded</td>' in c.get("/").text
