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


def _ledger_with_events(path: str, n: int = 3) -> Ledger:
    led = Ledger.open(path)
    for i in range(n):
        led.append("note", {"i": i})
    return led


@pytest.mark.parametrize("argv", [
    ["ledger", "export", "l.db", "--ledger", "l.db"],
    ["ledger", "export", "sub", "--ledger", "l.db"],
])
def test_an_output_path_onto_the_ledger_or_a_folder_is_refused(workdir, capsys, argv):
    _ledger_with_events("l.db").close()
    (workdir / "sub").mkdir()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert ("refusing to overwrite" in err or "is a folder" in err) and "Traceback" not in err
    assert main(["ledger", "verify", "--ledger", "l.db"]) == 0  # the ledger is intact
    assert "3 events" in capsys.readouterr().out


@pytest.mark.parametrize("head", ["SHORT", "", "xyz"])
def test_verify_head_wants_the_full_hash_and_accepts_any_case(workdir, capsys, head):
    led = _ledger_with_events("l.db")
    full = led.head()
    led.close()
    value = full[:12] if head == "SHORT" else head
    assert main(["ledger", "verify", "--ledger", "l.db", "--head", value]) == 2
    assert "64 hex digits" in capsys.readouterr().err
    assert main(["ledger", "verify", "--ledger", "l.db", "--head", f" {full.upper()} "]) == 0


def test_ledger_show_prints_untrusted_fields_as_plain_text(workdir, capsys):
    led = Ledger.open("l.db", actor="[bold red]mallory[/] \x1b]0;pwned\x07\x1b[2J")
    led.append("note", {}, run="[link=http://evil]run[/link]")
    led.close()
    assert main(["ledger", "show", "--ledger", "l.db"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "[bold" in out and "[link=" in out  # shown, not interpreted as markup
    assert "\\x1b" in out
    assert main(["ledger", "show", "--ledger", "l.db", "--limit", "-1"]) == 2


def test_recipe_problems_are_found_before_a_run_folder_exists(workdir, capsys):
    for setting, message in (("model.architecture=digits-cnnn", "did you mean 'digits-cnn'"),
                             ("data.dataset=digitz", "did you mean 'digits'"),
                             ("steps[0].train.seed=5", "top-level seed"),
                             ("data.options.test_fractio=0.3", "did you mean 'test_fraction'"),
                             ("model.architecture=char-gpt", "reads char-lm data, but 'digits' is")):
        assert main(["train", "digits", "--set", setting, "--ledger", "l.db"]) == 2, setting
        assert message in capsys.readouterr().err
    assert not (workdir / "runs").exists() and not (workdir / "l.db").exists()
    (workdir / "afile").write_text("")
    assert main(["train", "digits", "--runs-dir", "afile", "--ledger", "l.db"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_recipes_shows_a_user_file_only_when_it_is_a_valid_recipe(workdir, capsys):
    (workdir / "bad.yaml").write_text("name: x\nsteps: [\n")
    (workdir / "bin.yaml").write_bytes(b"name: caf\xe9\n")
    for name, message in (("bad.yaml", "malformed YAML"), ("bin.yaml", "not UTF-8")):
        assert main(["recipes", name, "--json"]) == 2
        assert message in capsys.readouterr().err
