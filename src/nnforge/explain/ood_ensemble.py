"""``ensemble``: several detectors, each on its own inputs, their scores standardised and averaged.

Detectors see different things — a language model the wording, a shallow layer the vocabulary, the last
layer the meaning — and fail on different shifts. Their scores live on different scales, so each is
standardised with the mean and spread of its scores on held-out in-distribution rows (a seeded part of
the training data, never OOD data) before the average; ``+inf`` scores (a member that cannot judge an input)
are left out of those statistics and stay ``+inf``, so the ensemble flags such an input::

    ensemble = build_detector("ensemble", members=[
        {"detector": "token-ngram", "params": {"order": 3}},
        {"detector": "mahalanobis", "params": {"class_conditional": False}, "inputs": {"features": "layer0"}},
        {"detector": "knn"},
    ]).fit(tokens=ids, layer0=shallow_features, features=last_features)

``inputs`` renames what a member reads: above, the second member's ``features`` come from the
ensemble's ``layer0`` input (token ids keep the name ``tokens``). Members are fitted on the other ``1 - holdout`` of the training rows.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from pydantic import Field, field_validator

from nnforge.config import Config
from nnforge.errors import DataError, ModelError
from nnforge.explain.ood import OOD_DETECTORS, OODDetector

__all__ = ["Ensemble", "EnsembleMember"]


class EnsembleMember(Config):
    """One member: a registered detector, its hyperparameters, and where its inputs come from."""

    detector: str
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict, description="member input name -> ensemble input name")

    @field_validator("detector")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in OOD_DETECTORS or name == "ensemble":
            raise ValueError(OOD_DETECTORS.unknown_message(name) if name != "ensemble" else "ensembles do not nest")
        return name


class _EnsembleParams(Config):
    members: tuple[EnsembleMember, ...] = Field(min_length=1)
    holdout: float = Field(0.2, gt=0, lt=1, description="fraction of training rows used to standardise scores")
    seed: int = 0


@OOD_DETECTORS.register("ensemble")
class Ensemble(OODDetector):
    """Mean of the members' scores, each standardised on held-out in-distribution training rows."""

    name = "ensemble"
    inputs = ()
    Params = _EnsembleParams
    params: _EnsembleParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.members: list[OODDetector] = [OOD_DETECTORS.get(m.detector)(**m.params) for m in self.params.members]

    def _routes(self, i: int) -> dict[str, str]:
        member, spec = self.members[i], self.params.members[i]
        return {k: spec.inputs.get(k, k) for k in type(member).inputs}

    @property
    def input_names(self) -> tuple[str, ...]:
        """The union of the members' inputs, after renaming."""
        names: list[str] = []
        for i in range(len(self.members)):
            names += [v for v in self._routes(i).values() if v not in names]
        return tuple(names)

    def _member_inputs(self, i: int, x: dict[str, torch.Tensor], rows: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return {k: x[v] if rows is None else x[v][rows] for k, v in self._routes(i).items()}

    def _fit(self, x: dict[str, torch.Tensor], labels: torch.Tensor | None) -> None:
        n = next(iter(x.values())).shape[0]
        n_ref = int(round(self.params.holdout * n))
        if n_ref < 2 or n - n_ref < 2:
            raise DataError(f"ensemble.fit: {n} training rows cannot be split into fitting and holdout={self.params.holdout} "
                            "parts of at least 2 rows each")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.params.seed))
        ref, fit = perm[:n_ref], perm[n_ref:]
        means, stds = [], []
        for i, member in enumerate(self.members):
            member.fit(labels=None if labels is None else labels[fit], **self._member_inputs(i, x, fit))
            s = member.score(**self._member_inputs(i, x, ref)).double()
            # +inf (token-ngram on a text with no tokens) is "cannot judge": it stays +inf after standardising,
            # but must not enter the statistics (a mean of inf and a NaN spread made every score NaN)
            s = s[torch.isfinite(s)]
            if s.numel() < 2:
                raise DataError(f"ensemble.fit: member {i} ({member.name!r}) gave fewer than 2 finite scores on the "
                                f"{n_ref} holdout rows (+inf: inputs it cannot judge, e.g. texts with no tokens); "
                                "cannot standardise it: give it more usable training rows")
            means.append(s.mean())
            stds.append(s.std().clamp_min(1e-12))
        self._state = {"mean": torch.stack(means), "std": torch.stack(stds)}

    def _standardised(self, x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [(m.score(**self._member_inputs(i, x, None)).double() - self._state["mean"][i]) / self._state["std"][i]
                for i, m in enumerate(self.members)]

    def _score(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack(self._standardised(x)).mean(0)

    def member_scores(self, **inputs: Any) -> dict[str, torch.Tensor]:
        """Each member's standardised score (for reports), keyed ``"<index>:<detector>"``."""
        if not self.fitted:
            raise ModelError("the 'ensemble' OOD detector is not fitted: call fit(...) on in-distribution training data first")
        z = self._standardised(self._collect(inputs, fitting=False))
        return {f"{i}:{m.name}": v for i, (m, v) in enumerate(zip(self.members, z, strict=True))}

    def state(self) -> dict[str, torch.Tensor]:
        out = {k: v.contiguous() for k, v in self._state.items()}
        for i, m in enumerate(self.members):
            out.update({f"member{i}.{k}": v for k, v in m.state().items()})
        return out

    @classmethod
    def from_state(cls, params: dict[str, Any], dims: dict[str, int], state: dict[str, torch.Tensor]) -> OODDetector:
        det = cast(Ensemble, super().from_state(params, dims, {k: v for k, v in state.items() if "." not in k}))
        for i, m in enumerate(det.members):
            prefix = f"member{i}."
            member_dims = {k: dims[v] for k, v in det._routes(i).items() if k != "tokens"}
            det.members[i] = type(m).from_state(det.params.members[i].params, member_dims,
                                                {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        return det
