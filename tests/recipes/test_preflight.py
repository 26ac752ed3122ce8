"""Bad input known before computation (files, columns, classes, weights, splits, layers, modules) creates no run
folder and no ledger event: the runner loads data and model and runs every step's preflight first (exit 2)."""

from __future__ import annotations

import pytest

from nnforge.cli import main

FILES = "data: {{dataset: files, options: {{files: {{train: {train}, test: {test}}}{extra}}}, val_split: null}}\n"


def _files_recipe(train: str = "train.csv", test: str = "train.csv", extra: str = "") -> str:
    return "model: {name: minilm}\n" + FILES.format(train=train, test=test, extra=extra) + "steps: [evaluate]\n"


@pytest.mark.parametrize("write, recipe, message", [
    (None, _files_recipe(train="missing.csv"), "missing.csv: no such file"),
    ("text,label\nhello,a\nbye,b\n", _files_recipe(extra=", label_column: genre"), "no column 'genre'"),
    (b"text,label\ncaf\xe9,a\nbye,b\n", _files_recipe(), "not UTF-8"),
    ("text,label\nhello,a\nbye,a\n", _files_recipe(), "one class"),
    (None, "model: {architecture: digits-cnn, safetensors: none.safetensors}\ndata: {dataset: digits}\n"
           "steps: [quantize]\n", "none.safetensors"),
    ("text,label\nhello,a\nbye,b\n", _files_recipe().replace("val_split: null", "val_split: dev"),
     "data.val_split: dataset 'files' has no split 'dev'; it has ['test', 'train']"),
    (None, "model: {architecture: digits-cnn}\ndata: {dataset: digits, test_split: val}\nsteps: [quantize]\n",
     "data.test_split: dataset 'digits' has no split 'val'"),
    (None, "model: {architecture: digits-cnn}\ndata: {dataset: digits}\n"
           "steps: [{quantize: {config: {type: weight-only, data: {plan: {features.9: int4}}}}}]\n",
     "steps[0] (quantize): quantize: plan names modules ['features.9']"),
    (None, "model: {architecture: digits-cnn}\ndata: {dataset: digits}\nsteps: [{quantize: {scheme: mixed}}]\n",
     "needs a 'calibrate' step with a budget"),
    (None, "model: {architecture: digits-cnn}\ndata: {dataset: digits}\nsteps: [{quantize: {scheme: w8a8}}, "
           "{train: {train: {max_steps: 2}}}]\n", None),
])
def test_bad_input_creates_no_run_folder_and_no_ledger_event(workdir, capsys, write, recipe, message):
    if write is not None:
        data = write if isinstance(write, bytes) else write.encode()
        (workdir / "train.csv").write_bytes(data)
    (workdir / "r.yaml").write_text(recipe)
    rc = main(["run", "r.yaml", "--ledger", "l.db", "--json"])
    if message is None:  # the control: the same checks let a good recipe through
        assert rc == 0
        assert len(list((workdir / "runs").iterdir())) == 1
        return
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and "Traceback" not in err
    assert not (workdir / "runs").exists() and not (workdir / "l.db").exists()


@pytest.mark.parametrize("setting, message", [
    ("steps[1].lora.layers=[6, 9]", "lora.layers [6, 9] are not layer indices of the model's"),
    ("steps[1].lora.target_modules=[query, quary]", "lora.target_modules ['quary'] name no Linear module"),
    ("steps[1].lora.trainable=[heads]", "lora.trainable ['heads'] are not submodules"),
])
def test_lora_options_are_checked_against_the_model_before_the_run(workdir, capsys, shakespeare_texts, setting,
                                                                    message):
    argv = ["run", "quickstart", "--ledger", "l.db", "--set", f"data.options.path={shakespeare_texts}",
            "--set", "data.options.passages_per_play=2", "--set", setting]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "steps[1] (finetune)" in err
    assert not (workdir / "runs").exists() and not (workdir / "l.db").exists()


def test_the_train_step_refuses_data_it_cannot_train_on(workdir, capsys):
    (workdir / "train.csv").write_text("text,label\nhello,a\nbye,b\n")
    (workdir / "r.yaml").write_text(_files_recipe().replace("steps: [evaluate]", "steps: [train]"))
    assert main(["run", "r.yaml", "--ledger", "l.db"]) == 2
    assert "trains on a character corpus or an array dataset" in capsys.readouterr().err
    assert not (workdir / "runs").exists()


def test_the_default_validation_split_is_optional(workdir):
    """Your files may have no validation split: the default (val) is then left out, not an error."""
    from nnforge.recipes import parse_recipe
    from nnforge.recipes.runner import load_data

    (workdir / "train.csv").write_text("text,label\nhello,a\nbye,b\n")
    doc = {"model": {"name": "minilm"}, "steps": ["evaluate"],
           "data": {"dataset": "files", "options": {"files": {"train": "train.csv", "test": "train.csv"}}}}
    splits, _ = load_data(parse_recipe(doc))
    assert sorted(splits) == ["test", "train"]
