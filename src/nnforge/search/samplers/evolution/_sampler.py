"""Regularized evolution (Real et al., 2019, "Regularized Evolution for Image Classifier Architecture Search")
as an Optuna sampler.

The cycle, one child per trial::

    population = the `population_size` most recently completed trials      # aging: the oldest drops out
    if len(population) < population_size: sample the child at random      # the initial population
    else:
        sample = `sample_size` members of the population, at random           # tournament
        parent = the best of the sample (feasible first; then the value, or the fewest dominating it)
        child = parent with one parameter mutated (another value of that parameter, at random)

Nothing is kept in the sampler between trials: the population is read from the study's trials (ordered by
completion time) and each child's lineage (parent trial, mutated parameter) is written into its system
attributes, so workers sharing a journal file or PostgreSQL storage run one evolution together.
Pruned and failed trials never join the population. Parameters the parent lacks (a conditional parameter
that became active through the mutation) are sampled at random.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nnforge.errors import ConfigError

if TYPE_CHECKING:
    from optuna.study import Study

__all__ = ["EvolutionSampler", "PARENT_KEY", "MUTATED_KEY"]

PARENT_KEY = "evolution:parent"  # system attribute: the parent trial's number
MUTATED_KEY = "evolution:mutated"  # system attribute: the name of the parameter the child changed
_PARENT_ID_KEY = "evolution:parent_id"  # system attribute: the parent's storage id (numbers are per study)
_MUTATION_TRIES = 32


class EvolutionSampler(BaseSampler):
    """Regularized (aging) evolution with tournament selection and single-parameter mutation.

    Args:
        population_size: how many of the most recently completed trials form the population (P in the paper).
        sample_size: tournament size (S in the paper), 1 <= S <= P.
        seed: seed of the random choices.

    Constraints are read from each trial (``FrozenTrial.constraints``, set with Optuna's
    ``Trial.set_constraint``; values <= 0 are satisfied): an infeasible member loses every tournament against a
    feasible one, and between infeasible members the smaller total violation wins.

    Raises:
        ConfigError: population_size < 1, or sample_size outside [1, population_size].
    """

    def __init__(self, *, population_size: int = 20, sample_size: int = 5, seed: int | None = None) -> None:
        if isinstance(population_size, bool) or not isinstance(population_size, int) or population_size < 1:
            raise ConfigError(f"The 'population_size' parameter of the evolution sampler must be an int >= 1. "
                              f"Got {population_size!r} instead.")
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or not 1 <= sample_size <= population_size:
            raise ConfigError(f"The 'sample_size' parameter of the evolution sampler must be an int in the range "
                              f"[1, population_size={population_size}]. Got {sample_size!r} instead.")
        self.population_size, self.sample_size = population_size, sample_size
        self._rng = np.random.RandomState(seed)
        self._random = RandomSampler(seed=None if seed is None else seed + 1)

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    # --- Optuna's sampler interface ------------------------------------------------------------------------

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Pick the parent by tournament and the parameter to mutate; record both on the trial."""
        population = self.population(study)
        if len(population) < self.population_size:
            return
        picks = self._rng.choice(len(population), size=self.sample_size, replace=False)
        parent = tournament_winner([population[i] for i in picks], study.directions, self._rng)
        mutable = sorted(name for name, dist in parent.distributions.items() if not dist.single())
        storage = study._storage
        storage.set_trial_system_attr(trial._trial_id, PARENT_KEY, parent.number)
        storage.set_trial_system_attr(trial._trial_id, _PARENT_ID_KEY, parent._trial_id)
        if mutable:
            storage.set_trial_system_attr(trial._trial_id, MUTATED_KEY, mutable[self._rng.randint(len(mutable))])

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        parent_id = trial.system_attrs.get(_PARENT_ID_KEY)
        if parent_id is None:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        parent = study._storage.get_trial(parent_id)
        inherited = param_name in parent.params and parent.distributions[param_name] == param_distribution
        if not inherited:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        value = parent.params[param_name]
        if trial.system_attrs.get(MUTATED_KEY) == param_name:
            return self._mutate(study, trial, param_name, param_distribution, value)
        return value

    # --- evolution ---------------------------------------------------------------------------------------

    def population(self, study: Study) -> list[FrozenTrial]:
        """The ``population_size`` most recently completed trials, oldest first."""
        done = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True)
        done = sorted(done, key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number))
        return done[-self.population_size:]

    def _mutate(self, study: Study, trial: FrozenTrial, name: str, dist: BaseDistribution, value: Any) -> Any:
        """Another value of the parameter: a different choice, or a fresh random value different from ``value``."""
        if isinstance(dist, CategoricalDistribution):
            others = [c for c in dist.choices if c != value]
            return others[self._rng.randint(len(others))]
        if isinstance(dist, IntDistribution) and not dist.log:
            others = [v for v in range(dist.low, dist.high + 1, dist.step) if v != value]
            return others[self._rng.randint(len(others))]
        new = value
        for _ in range(_MUTATION_TRIES):
            new = self._random.sample_independent(study, trial, name, dist)
            if new != value:
                break
        return new


def violation(trial: FrozenTrial) -> float:
    """How much a trial breaks its constraints (0 when feasible or when none were recorded)."""
    return float(sum(max(0.0, c) for c in trial.constraints.values()))


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def tournament_winner(sample: Sequence[FrozenTrial], directions: Sequence[StudyDirection],
                      rng: np.random.RandomState) -> FrozenTrial:
    """The best of a tournament sample: least constraint violation, then the best value (one objective) or
    the fewest sample members dominating it (several objectives); ties broken at random."""
    signs = [1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in directions]
    losses = [[s * v for s, v in zip(signs, t.values, strict=True)] for t in sample]

    def key(i: int) -> tuple[float, float]:
        if len(signs) == 1:
            return violation(sample[i]), losses[i][0]
        return violation(sample[i]), float(sum(_dominates(losses[j], losses[i]) for j in range(len(sample))))

    keys = [key(i) for i in range(len(sample))]
    best = min(keys)
    ties = [i for i, k in enumerate(keys) if k == best]
    return sample[ties[rng.randint(len(ties))]]
