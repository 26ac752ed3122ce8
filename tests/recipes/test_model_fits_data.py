"""Model options are checked against the model and the data before a step runs: exit 2 with a clear message,
not a raw TypeError/IndexError (exit 1)."""

from __future__ import annotations

import re

import pytest

from nnforge.cli import main
from nnforge.errors import ConfigError


@pytest.mark.parametrize("recipe, setting, message", [
    ("quickstart", "model.options={foo: 1}", r"no option 'foo'; its options are \['max_length'\]"),
    ("quickstart", "model.options={num_classes: 4}", r"\['num_classes'\] cannot be given as an option"),
    ("digits", "model.options={num_classes: 5}", r"num_classes=5 but the dataset 'digits' has 10 classes"),
    ("charlm", "model.options={vocab_size: 20}", r"vocab_size=20 but the corpus 'shakespeare-char' has \d+ char"),
])
def test_options_that_do_not_fit_exit_2_with_the_cause(workdir, capsys, shakespeare_texts, recipe, setting, message):
    assert main(["run", recipe, "--set", setting]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err


def test_load_names_the_allowed_options():
    from nnforge.models import load

    with pytest.raises(ConfigError, match=r"has no option 'foo'; its options are \['max_length', 'seed'\]"):
        load("minilm", num_classes=2, foo=1)
