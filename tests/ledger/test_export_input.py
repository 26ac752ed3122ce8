"""A JSONL file given as a ledger export is bad input (exit 2) when it is empty or not an export at all; a real
export with a broken line after its first event is tampering (exit 1), and an empty ledger is not exported."""

from __future__ import annotations

import json

import pytest

from nnforge.cli import main
from nnforge.errors import ConfigError
from nnforge.ledger import Ledger


@pytest.mark.parametrize(("content", "message"), [
    ("", "an empty file, not a ledger export"),
    ("\n\n", "an empty file, not a ledger export"),
    ('{"text": "a line of someone\'s dataset", "label": 1}\n', "not an nnforge ledger export"),
    ("not json at all\n", "not an nnforge ledger export"),
    ("[1, 2, 3]\n", "not an nnforge ledger export"),
])
def test_an_empty_or_foreign_jsonl_is_bad_input(tmp_path, capsys, content, message):
    path = tmp_path / "x.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        Ledger.open(path)
    assert main(["ledger", "verify", "--ledger", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_a_broken_line_in_a_real_export_is_tampering(tmp_path, capsys):
    led = Ledger.open(tmp_path / "l.db")
    for i in range(3):
        led.append("note", {"i": i})
    export = tmp_path / "e.jsonl"
    assert led.export_jsonl(export) == 3
    lines = export.read_text().splitlines()
    doc = json.loads(lines[1])
    doc["data"]["i"] = 9
    export.write_text("\n".join([lines[0], json.dumps(doc), lines[2]]) + "\n")
    assert main(["ledger", "verify", "--ledger", str(export)]) == 1
    assert "#2" in capsys.readouterr().out
    led.close()


def test_an_empty_ledger_is_not_exported(tmp_path):
    with Ledger.open(tmp_path / "empty.db") as led, pytest.raises(ConfigError, match="holds no events"):
        led.export_jsonl(tmp_path / "e.jsonl")
    assert not (tmp_path / "e.jsonl").exists()
