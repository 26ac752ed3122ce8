"""Differential privacy for federated jobs, with one accountant.

Two levels, one accounting:

- ``record`` — each client trains with DP-SGD through **Opacus** (Poisson sampling of its rows, per-sample gradient
  clipping to ``max_grad_norm``, Gaussian noise of ``noise_multiplier × max_grad_norm``). A row of client ``k``'s
  data is protected by that client's mechanism: sampling rate ``q_k = batch_size / n_k``, ``steps_k`` noisy steps
  per round.
- ``client`` — Flower's server-side central DP (``DifferentialPrivacyServerSideFixedClipping``): each client's
  update is clipped to ``max_grad_norm`` and the aggregate gets Gaussian noise; a client's whole contribution is
  protected, with sampling rate ``q = sampled clients / clients`` and one release per round.

The accountant is Opacus's (``rdp`` by default, ``prv`` on request), composed over rounds on the server: ε after
round ``r`` is, for ``record``, the largest ε of any client's mechanism after ``r`` rounds, for ``client``, the
mechanism's ε after ``r`` releases. The server knows every client's ``n_k`` from the partition, so the figure is
computed before a round runs: a round that would take ε past the budget is not started, the run stops and says so.

Without a ``noise_multiplier`` the noise is calibrated so that the configured rounds spend exactly ``epsilon``
(per client, from its own ``q_k`` and steps: every client's rows get the same ε).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from nnforge.config import Config, config_type
from nnforge.errors import ConfigError, MissingDependencyError

__all__ = ["PrivacyConfig", "Mechanism", "epsilon_of", "calibrate"]


@config_type("federated.privacy")
class PrivacyConfig(Config):
    """Differential privacy of a federated job (see :mod:`nnforge.federated.privacy`)."""

    level: Literal["record", "client"] = Field("record", description="protect each row (DP-SGD on the clients) "
                                                                     "or each client's whole data (central DP)")
    epsilon: float = Field(..., gt=0, le=1000, description="the budget: total epsilon over the run")
    delta: float = Field(1e-5, gt=0, lt=1)
    noise_multiplier: float | None = Field(None, gt=0, description="None: calibrated so the run's rounds spend "
                                                                   "exactly epsilon; given: the run stops before a "
                                                                   "round that would exceed it")
    max_grad_norm: float = Field(1.0, gt=0, description="record: per-sample gradient clip; client: update clip")
    accountant: Literal["rdp", "prv"] = "rdp"


@dataclass(frozen=True)
class Mechanism:
    """One subsampled Gaussian mechanism, repeated ``steps_per_round`` times a round."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int


def _opacus_accountants() -> tuple[object, object]:
    try:
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError("differential privacy needs Opacus: pip install 'nnforge[federated]'") from exc
    return create_accountant, get_noise_multiplier


def epsilon_of(mechanism: Mechanism, rounds: int, delta: float, accountant: str = "rdp") -> float:
    """ε after ``rounds`` rounds of ``mechanism`` (Opacus's accountant)."""
    if rounds <= 0:
        return 0.0
    create, _ = _opacus_accountants()
    acc = create(accountant)  # type: ignore[operator]
    acc.history = [(mechanism.noise_multiplier, mechanism.sample_rate, mechanism.steps_per_round * rounds)]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha": the bound is valid, only looser
        return float(acc.get_epsilon(delta=delta))


def calibrate(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp") -> float:
    """The noise multiplier that spends ``epsilon`` in ``steps`` steps at ``sample_rate`` (Opacus's search)."""
    import warnings

    _, noise = _opacus_accountants()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "optimal order is the largest alpha": valid, only looser
            return float(noise(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,  # type: ignore[operator]
                               steps=steps, accountant=accountant))
    except ValueError as exc:
        raise ConfigError(f"privacy: no noise level reaches epsilon {epsilon} at delta {delta} with sample rate "
                          f"{sample_rate:.4g} over {steps} steps ({exc})") from None


def record_mechanisms(config: PrivacyConfig, examples: list[int], batch_size: int, epochs: float | None,
                      steps: int | None, rounds: int) -> list[Mechanism]:
    """Each client's DP-SGD mechanism: Poisson rate ``batch_size / n_k`` (at most 1), steps per round from
    ``steps`` or ``epochs / q_k``, and the noise (given, or calibrated to spend ``epsilon`` in ``rounds``)."""
    out = []
    for n in examples:
        q = min(1.0, batch_size / n)
        per_round = steps if steps is not None else max(1, math.ceil((epochs or 1.0) / q))
        sigma = config.noise_multiplier or calibrate(config.epsilon, config.delta, q, per_round * rounds,
                                                     config.accountant)
        out.append(Mechanism(sigma, q, per_round))
    return out


def client_mechanism(config: PrivacyConfig, sampled: int, clients: int, rounds: int) -> Mechanism:
    """Central DP: one release per round at rate ``sampled / clients``."""
    q = sampled / clients
    sigma = config.noise_multiplier or calibrate(config.epsilon, config.delta, q, rounds, config.accountant)
    return Mechanism(sigma, q, 1)
