"""search() with one worker on a journal file: exact trial counts, resume, constraints, Pareto fronts, errors."""

from __future__ import annotations

import json

import pytest

from nnforge.errors import ConfigError
from nnforge.search import Objective, Param, SearchConfig, search
from nnforge.search._result import TrialRecord, best_trials

pytest.importorskip("optuna")

XY = {"x": Param(kind="float", low=-5, high=5), "y": Param(kind="float", low=-5, high=5)}


def bowl(ctx):
    x, y = ctx.params["x"], ctx.params["y"]
    return {"loss": (x - 1) ** 2 + (y + 2) ** 2, "size_mb": abs(x) + abs(y)}


def test_tpe_finds_the_planted_optimum(tmp_path):
    config = SearchConfig(space=XY, objectives=[Objective(metric="loss")], trials=40, sampler="tpe", seed=1)
    result = search(bowl, config, storage=tmp_path / "s.journal")
    assert result.count("complete") == 40 and len(result.trials) == 40
    assert sorted(t.number for t in result.trials) == list(range(40))
    best = result.best_trial
    assert best is not None and best.values == [best.metrics["loss"]]
    assert best.metrics["loss"] == min(t.metrics["loss"] for t in result.trials)
    assert best.metrics["loss"] < 0.5  # optimum 0 at (1, -2); one uniform draw lands this close with p = 0.016
    assert abs(best.params["x"] - 1) < 1 and abs(best.params["y"] + 2) < 1
    json.dumps(result.to_dict(), allow_nan=False)


def test_resume_on_the_same_storage_adds_only_the_missing_trials(tmp_path):
    config = SearchConfig(space=XY, objectives=[Objective(metric="loss")], trials=6, sampler="random")
    first = search(bowl, config, storage=tmp_path / "s.journal")
    again = search(bowl, config, storage=tmp_path / "s.journal")
    assert [t.params for t in again.trials] == [t.params for t in first.trials]  # nothing re-run
    seen = []
    more = search(bowl, config.replace(trials=9), storage=tmp_path / "s.journal", progress=seen.append)
    assert [[t.number for t in snap.new] for snap in seen] == [[6], [7], [8]]  # only this run's trials, once each
    assert [snap.complete for snap in seen] == [7, 8, 9] and seen[-1].best == more.best
    assert more.count("complete") == 9 and [t.number for t in more.trials] == list(range(9))
    assert len({(t.params["x"], t.params["y"]) for t in more.trials}) == 9  # the resumed sampler draws new points


def test_constraints_mark_trials_infeasible_and_the_best_is_feasible(tmp_path):
    config = SearchConfig(space=XY, objectives=[Objective(metric="loss")], constraints=["size_mb <= 1.5"],
                          trials=25, sampler="tpe", seed=0)
    result = search(bowl, config, storage=tmp_path / "s.journal")
    for t in result.trials:
        assert t.feasible == (t.metrics["size_mb"] <= 1.5)  # kept with true metrics, marked, never penalised
        assert t.values == [t.metrics["loss"]]
    feasible = [t for t in result.trials if t.feasible]
    assert feasible and len(feasible) < len(result.trials)
    assert result.best_trial == min(feasible, key=lambda t: t.metrics["loss"])


def test_pareto_front_of_two_objectives_is_exactly_the_nondominated_feasible_trials(tmp_path):
    config = SearchConfig(space=XY, objectives=[Objective(metric="loss"), Objective(metric="size_mb")],
                          trials=16, sampler="nsga2", sampler_options={"population_size": 8})
    result = search(bowl, config, storage=tmp_path / "s.journal")
    pts = [(t.metrics["loss"], t.metrics["size_mb"]) for t in result.trials]
    front = {t.number for t in result.trials
             if not any(a <= t.metrics["loss"] and b <= t.metrics["size_mb"] and (a, b) != (t.metrics["loss"],
                        t.metrics["size_mb"]) for a, b in pts)}
    assert {t.number for t in result.best} == front and len(front) >= 1


def test_best_of_a_maximised_objective_and_pareto_with_mixed_directions():
    def rec(n, values, feasible=True):
        return TrialRecord(number=n, state="complete", params={}, metrics={}, values=values, duration_s=0.0,
                           feasible=feasible)

    trials = [rec(0, [0.9]), rec(1, [0.95], feasible=False), rec(2, [0.7])]
    assert [t.number for t in best_trials(trials, [Objective(metric="acc", direction="maximize")])] == [0]
    two = [rec(0, [0.9, 5.0]), rec(1, [0.8, 3.0]), rec(2, [0.8, 6.0]), rec(3, [0.95, 9.0])]
    objs = [Objective(metric="acc", direction="maximize"), Objective(metric="ms")]
    assert [t.number for t in best_trials(two, objs)] == [3, 0, 1]


def failing_on_odd(ctx):
    if ctx.number % 2:
        raise RuntimeError("diverged")
    return bowl(ctx)


def test_a_raising_trial_is_recorded_as_failed_and_the_study_goes_on(tmp_path):
    config = SearchConfig(space=XY, objectives=[Objective(metric="loss")], trials=6, sampler="random")
    result = search(failing_on_odd, config, storage=tmp_path / "s.journal")
    assert [t.state for t in result.trials] == ["complete", "failed"] * 3
    assert result.trials[1].error == "RuntimeError: diverged" and result.trials[1].feasible is None


def test_contract_errors_name_the_metric_or_option(tmp_path):
    config = SearchConfig(space=XY, objectives=[Objective(metric="accuracy")], trials=3, sampler="random")
    with pytest.raises(ConfigError, match="needs metric 'accuracy' but the trial function returned"):
        search(bowl, config, storage=tmp_path / "a.journal")
    with pytest.raises(ConfigError, match="needs metric 'latency_b1_ms'"):
        search(bowl, config.replace(objectives=[Objective(metric="loss")], constraints=["latency_b1_ms <= 3"]),
               storage=tmp_path / "b.journal")
    with pytest.raises(ConfigError, match="did you mean 'tpe'"):
        SearchConfig(space=XY, objectives=[Objective(metric="loss")], sampler="tpee")
    with pytest.raises(ConfigError, match="has no option"):
        search(bowl, config.replace(sampler_options={"n_startup": 3}), storage=tmp_path / "c.journal")
    with pytest.raises(ConfigError, match="'sqlite' URLs are not supported"):
        search(bowl, config, storage="sqlite:///x.db")
    with pytest.raises(ConfigError, match="no storage"):
        search(bowl, config)
    with pytest.raises(ConfigError, match="must be importable by the worker processes"):
        search(lambda ctx: {"loss": 0.0}, config, storage=tmp_path / "d.journal", workers=2)
    with pytest.raises(ConfigError, match="constraints\\[0\\]: cannot read constraint"):
        SearchConfig(space=XY, objectives=[Objective(metric="loss")], constraints=["size < 3"])


def only_x_matters(ctx):
    return {"loss": (ctx.params["x"] - 1) ** 2 + 1e-3 * ctx.params["y"]}


def test_importances_single_out_the_parameter_that_drives_the_objective(tmp_path):
    config = SearchConfig(space=XY, objectives=[Objective(metric="loss")], trials=20, sampler="random", seed=0)
    result = search(only_x_matters, config, storage=tmp_path / "s.journal")
    imp = result.importances["loss"]
    assert set(imp) == {"x", "y"} and sum(imp.values()) == pytest.approx(1.0)
    assert imp["x"] > 0.9
    import optuna

    from nnforge.search._result import importances
    from nnforge.search._study import open_storage

    study = optuna.load_study(study_name="search", storage=open_storage(tmp_path / "s.journal"))
    ped = importances(study, config.objectives, method="ped-anova")["loss"]  # the estimator without scikit-learn
    assert set(ped) == {"x", "y"} and ped["x"] > ped["y"]


def slow(ctx):
    import time

    time.sleep(0.3)
    return bowl(ctx)


def test_timeout_stops_claiming_and_a_later_call_finishes_the_study(tmp_path):
    config = SearchConfig(space=XY, objectives=[Objective(metric="loss")], trials=8, sampler="random",
                          timeout_s=0.5)
    first = search(slow, config, storage=tmp_path / "s.journal")
    assert 1 <= first.count("complete") < 8 and first.count("complete") + first.count("waiting") == 8
    rest = search(slow, config.replace(timeout_s=None), storage=tmp_path / "s.journal")
    assert rest.count("complete") == 8 and len(rest.trials) == 8


def interrupted_at_2(ctx):
    if ctx.number == 2 and not ctx.params.get("resumed"):
        raise KeyboardInterrupt
    return bowl(ctx)


def test_an_interrupted_trial_runs_again_when_the_same_process_resumes(tmp_path):
    config = SearchConfig(space=XY, objectives=[Objective(metric="loss")], trials=4, sampler="random")
    with pytest.raises(KeyboardInterrupt):
        search(interrupted_at_2, config, storage=tmp_path / "s.journal")
    result = search(bowl, config, storage=tmp_path / "s.journal")
    assert [t.state for t in result.trials] == ["complete", "complete", "retried", "complete", "complete"]
    assert result.trials[4].params == result.trials[2].params


def test_config_round_trips_and_a_seeded_study_repeats(tmp_path):
    from nnforge.config import load_config

    config = SearchConfig(space={**XY, "opt": Param(kind="categorical", choices=["a", "b"]),
                                 "m": Param(kind="float", low=0.5, high=0.9, when={"opt": ["b"]})},
                          objectives=[Objective(metric="loss")], constraints=["size_mb <= 4"], trials=5,
                          sampler="random", seed=7)
    assert load_config(config.to_dict()) == config
    one = search(bowl, config, storage=tmp_path / "a.journal")
    two = search(bowl, config, storage=tmp_path / "b.journal")
    assert [t.params for t in one.trials] == [t.params for t in two.trials]
    assert all(("m" in t.params) == (t.params["opt"] == "b") for t in one.trials)


def test_importing_search_loads_no_optuna_and_using_it_without_optuna_names_the_extra(tmp_path):
    import subprocess
    import sys

    code = ("import sys; import nnforge.search as s; assert 'optuna' not in sys.modules, 'optuna imported'; "
            "sys.modules['optuna'] = None; "
            "c = s.SearchConfig(space={'x': s.Param(kind='int', low=0, high=1)}, objectives=[s.Objective(metric='y')]); "
            f"s.search(lambda ctx: {{'y': 0.0}}, c, storage={str(tmp_path / 'x.journal')!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "MissingDependencyError: search needs Optuna: pip install 'nnforge[search]'" in proc.stderr, proc.stderr


def test_a_study_whose_creator_died_while_queueing_is_topped_up_to_exactly_the_trials(tmp_path, monkeypatch):
    import optuna

    from nnforge.search import _study

    monkeypatch.setattr(_study, "_BUDGET_WAIT_S", 0.3)  # how long a joiner waits for the creator's tickets
    storage = _study.open_storage(tmp_path / "s.journal")
    half = optuna.create_study(study_name="search", storage=storage)  # created, 2 of 5 tickets queued, then died
    for _ in range(2):
        half.enqueue_trial({}, skip_if_exists=False)
    config = SearchConfig(space=XY, objectives=[Objective(metric="loss")], trials=5, sampler="random")
    result = search(bowl, config, storage=tmp_path / "s.journal")
    assert [t.state for t in result.trials] == ["complete"] * 5


def test_a_dead_worker_not_yet_reaped_counts_as_dead():
    # a SIGKILLed worker stays a zombie until its parent reaps it; its /proc entry (and start time) remain, so a
    # start-time check alone took it for alive and the other workers waited forever to retry its trial
    import subprocess
    import sys
    import time

    from nnforge.search._study import _is_dead, _me

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(200):
        with open(f"/proc/{proc.pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            break
        time.sleep(0.05)
    assert fields[0] == "Z"
    worker = {**_me(), "pid": proc.pid, "start": fields[19]}  # as the worker recorded itself when it claimed
    assert _is_dead(worker)
    proc.wait()
    assert _is_dead(worker)
    assert not _is_dead(_me())
