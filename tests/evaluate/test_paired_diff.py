"""paired_bootstrap_diff_ci: an accuracy difference on the same items with its interval and McNemar's p."""

from __future__ import annotations

import numpy as np
import pytest

from nnforge.errors import ConfigError
from nnforge.evaluate import paired_bootstrap_diff_ci


def test_a_clear_gain_is_significant_and_a_tie_is_not():
    rng = np.random.default_rng(0)
    b = rng.random(600) < 0.47
    a = b | (rng.random(600) < 0.15)  # A gets every item B gets, plus about 8% more
    out = paired_bootstrap_diff_ci(a, b, n_boot=2000)
    assert out["diff"] == pytest.approx(a.mean() - b.mean())
    assert 0 < out["ci"][0] <= out["diff"] <= out["ci"][1]
    assert out["mcnemar_p"] < 1e-6 and out["c"] == 0 and out["n"] == 600
    # 0.4700 vs 0.4683 on n = 600, the quickstart's old claim: one more item right is no difference
    a2 = b.copy()
    a2[np.flatnonzero(~b)[0]] = True
    tie = paired_bootstrap_diff_ci(a2, b, n_boot=2000)
    assert tie["ci"][0] <= 0 <= tie["ci"][1] and tie["mcnemar_p"] == 1.0


def test_unpaired_vectors_are_refused():
    with pytest.raises(ConfigError, match="differ in length"):
        paired_bootstrap_diff_ci([1, 0, 1], [1, 0])
