"""Search spaces: validation of Param and conditional spaces, and sampling them on Optuna trials."""

from __future__ import annotations

import pytest

from nnforge.errors import ConfigError
from nnforge.search import Constraint, Param, suggest
from nnforge.search._space import check_space, order

optuna = pytest.importorskip("optuna")

SPACE = {
    "lr": Param(kind="float", low=1e-4, high=1e-1, log=True),
    "layers": Param(kind="int", low=1, high=8, step=1),
    "width": Param(kind="int", low=32, high=256, step=32),
    "optimizer": Param(kind="categorical", choices=["adamw", "sgd"]),
    "momentum": Param(kind="float", low=0.8, high=0.99, when={"optimizer": ["sgd"]}),
    "nesterov": Param(kind="categorical", choices=[True, False], when={"momentum": [0.9]}),
}


def test_param_rejects_bad_declarations_with_the_field_named():
    with pytest.raises(ConfigError, match="needs both 'low' and 'high'"):
        Param(kind="float", low=0.1)
    with pytest.raises(ConfigError, match="non-empty 'choices'"):
        Param(kind="categorical", choices=[])
    with pytest.raises(ConfigError, match="log-scale Param needs low > 0"):
        Param(kind="float", low=0.0, high=1.0, log=True)
    with pytest.raises(ConfigError, match="integer 'high'"):
        Param(kind="int", low=1, high=2.5)
    with pytest.raises(ConfigError, match="takes low/high, not 'choices'"):
        Param(kind="int", low=1, high=3, choices=[1, 2])


def test_conditions_must_name_a_parameter_and_values_it_can_take():
    with pytest.raises(ConfigError, match="'opt' is not a parameter"):
        check_space({"m": Param(kind="float", low=0, high=1, when={"opt": ["sgd"]})})
    with pytest.raises(ConfigError, match=r"\['adam'\] can never be taken by 'opt'"):
        check_space({"opt": Param(kind="categorical", choices=["sgd"]),
                     "m": Param(kind="float", low=0, high=1, when={"opt": ["adam"]})})
    with pytest.raises(ConfigError, match="form a cycle"):
        check_space({"a": Param(kind="categorical", choices=[1, 2], when={"b": [1]}),
                     "b": Param(kind="categorical", choices=[1, 2], when={"a": [1]})})


def test_order_puts_parents_before_children_whatever_the_declaration_order():
    space = {"child": Param(kind="float", low=0, high=1, when={"parent": ["x"]}),
             "parent": Param(kind="categorical", choices=["x", "y"]), "free": Param(kind="int", low=0, high=3)}
    assert order(space) == ["parent", "free", "child"]


def test_suggest_samples_within_bounds_and_only_active_conditionals():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_sgd = seen_adamw = 0
    for _ in range(60):
        trial = study.ask()
        params = suggest(trial, SPACE)
        assert 1e-4 <= params["lr"] <= 1e-1
        assert isinstance(params["layers"], int) and 1 <= params["layers"] <= 8
        assert params["width"] in range(32, 257, 32)
        if params["optimizer"] == "sgd":
            seen_sgd += 1
            assert 0.8 <= params["momentum"] <= 0.99
        else:
            seen_adamw += 1
            assert "momentum" not in params
        assert "nesterov" not in params  # momentum is continuous: never exactly 0.9
        assert trial.params == params  # exactly what Optuna recorded
        study.tell(trial, 0.0)
    assert seen_sgd > 10 and seen_adamw > 10


def test_constraint_parsing_and_violation_signs():
    c = Constraint.parse("latency_b1_ms <= 3")
    assert (c.metric, c.op, c.bound) == ("latency_b1_ms", "<=", 3.0)
    assert c.violation({"latency_b1_ms": 2.5}) == -0.5 and c.violation({"latency_b1_ms": 4.0}) == 1.0
    g = Constraint.parse("cos_mean>=0.995")
    assert g.violation({"cos_mean": 0.99}) == pytest.approx(0.005)
    assert g.violation({}) == float("inf")  # unknown: not satisfied
    assert Constraint.parse("size_mb <= 1e1").bound == 10.0
    for bad in ("latency < 3", "latency <= fast", "<= 3", "latency == 3"):
        with pytest.raises(ConfigError, match="METRIC <= NUMBER"):
            Constraint.parse(bad)
