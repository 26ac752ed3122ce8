"""Regularized evolution as an Optuna sampler: tournament, single-parameter mutation, aging, shared storage."""

from __future__ import annotations

import optuna
import pytest

from nnforge.errors import ConfigError
from nnforge.search.samplers.evolution._sampler import MUTATED_KEY, PARENT_KEY, EvolutionSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

CHOICES = [0, 1, 2, 3, 4, 5]
TARGET = {"a": 3, "b": 1, "c": 4, "d": 1, "e": 5}  # one point in 6^5 = 7776


def mismatches(trial: optuna.Trial) -> float:
    return float(sum(trial.suggest_categorical(k, CHOICES) != v for k, v in TARGET.items()))


def best_after(sampler: optuna.samplers.BaseSampler, n: int) -> float:
    study = optuna.create_study(sampler=sampler)
    study.optimize(mismatches, n_trials=n)
    return study.best_value


def test_finds_a_planted_optimum_that_random_search_misses() -> None:
    # evolution climbs one parameter at a time; random search has a 1 - (1 - 1/7776)^200 = 2.5% chance
    assert [best_after(EvolutionSampler(population_size=8, sample_size=4, seed=s), 200) for s in (0, 1, 2)] \
        == [0.0, 0.0, 0.0]
    assert min(best_after(optuna.samplers.RandomSampler(seed=s), 200) for s in (0, 1, 2)) >= 1.0


def test_a_child_is_its_tournament_winner_with_one_parameter_changed() -> None:
    sampler = EvolutionSampler(population_size=8, sample_size=8, seed=0)  # S = P: the winner is the best member
    study = optuna.create_study(sampler=sampler)
    for _ in range(40):
        population = sampler.population(study)
        trial = study.ask()
        value = mismatches(trial)
        frozen = study._storage.get_trial(trial._trial_id)
        if len(population) < 8:
            assert PARENT_KEY not in frozen.system_attrs  # the initial population is random
        else:
            parent = study.trials[frozen.system_attrs[PARENT_KEY]]
            assert parent.value == min(t.value for t in population)
            changed = [k for k in TARGET if frozen.params[k] != parent.params[k]]
            assert changed == [frozen.system_attrs[MUTATED_KEY]]
        study.tell(trial, value)


def test_population_is_the_most_recent_completed_trials() -> None:
    sampler = EvolutionSampler(population_size=5, sample_size=2, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(mismatches, n_trials=12)
    pruned = study.ask()
    mismatches(pruned)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)  # pruned trials never join the population
    assert [t.number for t in sampler.population(study)] == [7, 8, 9, 10, 11]


def test_feasible_beats_better_infeasible() -> None:
    # the constraint forbids a == 3, so the best value (0 mismatches) is infeasible; every parent chosen once the
    # initial population is full is feasible when a feasible member was in its tournament (S = P here)
    def objective(trial: optuna.Trial) -> float:
        value = mismatches(trial)
        trial.set_constraint("a != 3", 1.0 if trial.params["a"] == 3 else -1.0)
        return value

    sampler = EvolutionSampler(population_size=6, sample_size=6, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=60)
    parents = [study.trials[t.system_attrs[PARENT_KEY]] for t in study.trials if PARENT_KEY in t.system_attrs]
    assert parents and all(p.params["a"] != 3 for p in parents)


def test_several_objectives_pick_a_non_dominated_parent() -> None:
    sampler = EvolutionSampler(population_size=6, sample_size=6, seed=0)  # S = P: no member dominates the parent
    study = optuna.create_study(sampler=sampler, directions=["minimize", "maximize"])
    checked = 0
    for _ in range(40):
        population = sampler.population(study)
        trial = study.ask()
        x, y = trial.suggest_int("x", 0, 9), trial.suggest_int("y", 0, 9)
        frozen = study._storage.get_trial(trial._trial_id)
        if PARENT_KEY in frozen.system_attrs:
            px, py = study.trials[frozen.system_attrs[PARENT_KEY]].values
            assert not any(m.values[0] <= px and m.values[1] >= py and m.values != [px, py] for m in population)
            checked += 1
        study.tell(trial, (float(x), float(y)))
    assert checked == 34


def test_conditional_parameters_new_to_the_child_are_sampled() -> None:
    sampler = EvolutionSampler(population_size=4, sample_size=2, seed=3)
    study = optuna.create_study(sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        kind = trial.suggest_categorical("kind", ["small", "large"])
        if kind == "large":
            return trial.suggest_float("width", 1.0, 2.0)
        return 3.0

    study.optimize(objective, n_trials=30)
    children = [t for t in study.trials if PARENT_KEY in t.system_attrs]
    assert {t.params["kind"] for t in children} == {"small", "large"}
    assert all(("width" in t.params) == (t.params["kind"] == "large") for t in study.trials)


def test_workers_sharing_a_journal_continue_one_evolution(tmp_path) -> None:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    first = optuna.create_study(study_name="evo", storage=storage, sampler=EvolutionSampler(population_size=5,
                                                                                             sample_size=2, seed=0))
    first.optimize(mismatches, n_trials=5)
    # a second process: a new sampler object, nothing in memory; the population comes from the storage
    second = optuna.load_study(study_name="evo", storage=storage,
                               sampler=EvolutionSampler(population_size=5, sample_size=2, seed=1))
    second.optimize(mismatches, n_trials=1)
    assert second.trials[5].system_attrs[PARENT_KEY] in range(5)


@pytest.mark.parametrize("options", [{"population_size": 0}, {"population_size": 4, "sample_size": 5},
                                     {"sample_size": 0}])
def test_bad_sizes_are_refused(options: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="parameter of the evolution sampler"):
        EvolutionSampler(**options)


def planted(ctx) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return {"mismatches": float(sum(ctx.params[k] != v for k, v in TARGET.items())),
            "a": float(ctx.params["a"])}


def test_registered_and_run_by_search(tmp_path) -> None:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from nnforge.search import SAMPLERS, Objective, Param, SearchConfig, search

    assert "evolution" in SAMPLERS
    space = {k: Param(kind="categorical", choices=CHOICES) for k in TARGET}
    config = SearchConfig(space=space, objectives=[Objective(metric="mismatches")], sampler="evolution",
                          sampler_options={"population_size": 6, "sample_size": 3}, trials=24, seed=0,
                          constraints=["a <= 4"], study_name="evo")
    result = search(planted, config, storage=tmp_path / "study.journal")
    assert len(result.trials) == 24
    study = optuna.load_study(study_name="evo",
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "study.journal"))))
    children = [t for t in study.trials if PARENT_KEY in t.system_attrs]
    assert len(children) == 18 and all(t.constraints == {"a <= 4": t.params["a"] - 4.0} for t in study.trials)
    with pytest.raises(ConfigError, match="no option"):
        search(planted, config.replace(sampler_options={"population": 8}), storage=tmp_path / "other.journal")
