"""The command line: exit codes (0 ok, 1 failure, 2 bad input), JSON output, messages without tracebacks."""

from __future__ import annotations

import json
import sqlite3

import pytest

from nnforge.cli import main
from nnforge.ledger import Ledger


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("nnforge ")


def test_recipes_and_data_list_as_json(capsys):
    assert main(["recipes", "--json"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert "quickstart" in names
    assert main(["recipes", "quickstart"]) == 0
    assert "steps:" in capsys.readouterr().out
    assert main(["data", "list", "--json"]) == 0
    assert {"digits", "shakespeare-char", "shakespeare-genre"} <= {d["name"] for d in json.loads(capsys.readouterr().out)}


def test_tables_for_people(capsys):
    """The non-JSON forms render (rich tables) and carry the same facts."""
    assert main(["recipes"]) == 0
    text = capsys.readouterr().out
    assert "quickstart" in text and "digits" in text and "train" in text
    assert main(["recipes", "quickstart", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"]["name"] == "quickstart"
    assert main(["data", "list"]) == 0
    assert "shakespeare-genre" in capsys.readouterr().out
    assert main(["env"]) == 0
    text = capsys.readouterr().out
    assert "torch: 2." in text and "packages: numpy" in text


def test_env_json(capsys):
    assert main(["env", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["cores"] >= 1 and facts["torch"].startswith("2.")


@pytest.mark.parametrize("content, expected", [
    ("name: x\nsteps: [\n", "malformed YAML"),
    ("name: x\nmodel: {name: minilm}\ndata: {dataset: shakespeare-genre}\nsteps: [quantise]\n", "did you mean 'quantize'"),
    ("name: x\nmodel: {name: minilm}\ndata: {dataset: shakespeare-genre}\nsteps: [{evaluate: {repeats: many}}]\n",
     "steps[0].repeats"),
])
def test_bad_recipes_exit_2_without_traceback(workdir, capsys, content, expected):
    f = workdir / "r.yaml"
    f.write_text(content)
    assert main(["run", str(f)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (workdir / "runs").exists()  # nothing half-written


def test_missing_recipe_file_exits_2(workdir, capsys):
    assert main(["run", "missing.yaml"]) == 2
    assert "no such recipe file" in capsys.readouterr().err


def test_unknown_dataset_label_column_exits_2(workdir, capsys):
    (workdir / "train.csv").write_text("text,label\nhello,a\nbye,b\n")
    (workdir / "r.yaml").write_text(
        "model: {name: minilm}\n"
        "data: {dataset: files, options: {files: {train: train.csv, test: train.csv}, label_column: genre}}\n"
        "steps: [evaluate]\n")
    assert main(["run", "r.yaml", "--ledger", "l.db"]) == 2
    assert "no column 'genre'" in capsys.readouterr().err


def test_ledger_verify_exit_codes(workdir, capsys):
    led = Ledger.open("l.db")
    for i in range(4):
        led.append("note", {"i": i})
    assert main(["ledger", "verify", "--ledger", "l.db"]) == 0
    with sqlite3.connect("l.db") as conn:
        conn.execute("UPDATE events SET body = replace(body, '\"i\":2', '\"i\":7') WHERE seq = 3")
    assert main(["ledger", "verify", "--ledger", "l.db"]) == 1
    assert "event #3" in capsys.readouterr().out
    assert main(["ledger", "show", "--ledger", "l.db", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4


def test_ledger_commands_need_an_existing_ledger(workdir, capsys):
    assert main(["ledger", "verify", "--ledger", "none.db"]) == 2
    assert "no ledger there" in capsys.readouterr().err


def test_usage_error_exits_2(capsys):
    assert main(["run"]) == 2
