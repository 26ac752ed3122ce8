"""Out-of-distribution detectors: one score per input, higher for inputs unlike the training data.

    from nnforge.explain import build_detector
    detector = build_detector("knn", k=10).fit(features=train_features)   # in-distribution training data only
    scores = detector.score(features=new_features)                          # (N,), higher = more OOD

Each detector reads ``features`` (N, D) — e.g. a model's pooled embedding — and/or ``logits`` (N, C), or
``tokens`` (N, T); some use class ``labels`` (N,) while fitting. It is fitted on in-distribution training
data only; :class:`~nnforge.explain.OODGuard` then chooses a threshold on held-out in-distribution data.

The detectors (registered in :data:`OOD_DETECTORS`):

- ``msp``: minus the maximum softmax probability (Hendrycks & Gimpel 2017).
- ``max-logit``: minus the largest logit (Hendrycks et al. 2022).
- ``energy``: the free energy ``-T·logsumexp(logits / T)`` (Liu et al. 2020).
- ``mahalanobis``: the smallest Mahalanobis distance to a class mean under one shared covariance
  (Lee et al. 2018); with ``class_conditional=False``, the distance to one Gaussian of all training data.
- ``relative-mahalanobis``: the class distance minus the distance under one background Gaussian of all
  training data (Ren et al. 2021), which removes directions that every class shares.
- ``knn``: the distance to the k-th nearest training example after L2 normalisation (Sun et al. 2022).
- ``residual``: the norm of the part of a feature vector outside the principal subspace of the training
  features, and ``vim``: that norm scaled into a virtual logit against the energy (Wang et al. 2022).
- ``token-ngram`` (in :mod:`~nnforge.explain.ood_lm`): the per-token surprise of an n-gram language model.
- ``ensemble`` (in :mod:`~nnforge.explain.ood_ensemble`): standardised scores of several detectors, averaged.

Computation is in float64 on CPU tensors; scores come back as float32 CPU tensors.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from nnforge.config import Config
from nnforge.errors import ConfigError, DataError, ModelError
from nnforge.registry import Registry

__all__ = ["OOD_DETECTORS", "OODDetector", "build_detector", "MSP", "MaxLogit", "Energy", "Mahalanobis",
           "RelativeMahalanobis", "KNN", "Residual", "ViM"]

OOD_DETECTORS: Registry[type[OODDetector]] = Registry("OOD detector")

def _matrix(x: Any, name: str, where: str) -> torch.Tensor:
    """A finite (N, D) float64 CPU tensor, or a DataError saying what was given."""
    t = torch.as_tensor(x).detach().to("cpu")
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise DataError(f"{where}: {name} must be a non-empty 2-D tensor (N, D); got shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise DataError(f"{where}: {name} holds NaN or infinite values")
    return t


def _token_matrix(x: Any, where: str) -> torch.Tensor:
    """Token ids (N, T) as int64, negative entries being padding."""
    t = torch.as_tensor(x).detach().to("cpu")
    if t.ndim != 2 or t.shape[0] == 0 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise DataError(f"{where}: tokens must be a non-empty 2-D integer tensor (N, T) padded with -1; "
                        f"got dtype {t.dtype}, shape {tuple(t.shape)}")
    return t.long()


class _NoParams(Config):
    """No hyperparameters."""


class OODDetector:
    """Base of the detectors: input checks, fitted state, and (de)serialisation.

    Inputs are keyword arguments: ``features`` (N, D) and ``logits`` (N, C) are float matrices whose width
    must match between :meth:`fit` and :meth:`score`; ``tokens`` (N, T) are integer ids padded with -1.
    A detector reads the inputs named in :attr:`inputs` and ignores others, so one dict of inputs (e.g.
    from :class:`~nnforge.explain.TextFeatures`) serves every detector.

    Subclasses set :attr:`name`, :attr:`inputs`, :attr:`needs_labels`, a :attr:`Params` config, and
    implement ``_fit`` and ``_score``. Fitted state lives in ``self._state`` (named tensors), so that
    :meth:`state`/:meth:`from_state` can save any detector as safetensors.
    """

    name: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ("features",)
    needs_labels: ClassVar[bool] = False

    Params: ClassVar[type[Config]] = _NoParams
    params: Config

    def __init__(self, **params: Any) -> None:
        self.params = self.Params(**params)
        self._state: dict[str, torch.Tensor] = {}
        self._dims: dict[str, int] = {}
        self._fitted = False

    def __repr__(self) -> str:
        fitted = "fitted" if self.fitted else "not fitted"
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params.model_dump().items())}; {fitted})"

    @property
    def fitted(self) -> bool:
        return self._fitted

    @property
    def dims(self) -> dict[str, int]:
        """The width of each float input seen in :meth:`fit` (``{"features": 384}``), empty before fitting."""
        return dict(self._dims)

    @property
    def input_names(self) -> tuple[str, ...]:
        """The inputs :meth:`fit` and :meth:`score` read (keyword names)."""
        return self.inputs

    # --- checks ---------------------------------------------------------------------------------------

    def _collect(self, given: dict[str, Any], *, fitting: bool) -> dict[str, torch.Tensor]:
        where = f"{self.name}.{'fit' if fitting else 'score'}"
        names = self.input_names
        missing = [k for k in names if given.get(k) is None]
        if missing:
            raise DataError(f"{where}: the {self.name!r} detector reads {list(names)}; missing: {missing}. "
                            f"Pass them as keyword arguments ({missing[0]}=...).")
        out = {k: _token_matrix(given[k], where) if k == "tokens" else _matrix(given[k], k, where) for k in names}
        rows = {k: v.shape[0] for k, v in out.items()}
        if len(set(rows.values())) > 1:
            raise DataError(f"{where}: inputs have different numbers of rows: {rows}")
        if not fitting:
            for k, v in out.items():
                if k in self._dims and v.shape[1] != self._dims[k]:
                    raise DataError(f"{where}: {k} have {v.shape[1]} columns but the detector was fitted on "
                                    f"{self._dims[k]}; score inputs from the same model and layer as in fit")
        return out

    def _labels(self, labels: Any, n: int) -> torch.Tensor | None:
        if labels is None:
            if self.needs_labels:
                raise DataError(f"{self.name}.fit: the {self.name!r} detector needs class labels (labels=...)")
            return None
        y = torch.as_tensor(labels).detach().to("cpu").reshape(-1)
        if y.is_floating_point() or y.is_complex() or y.shape[0] != n:
            raise DataError(f"{self.name}.fit: labels must be {n} integers (one per row); got dtype {y.dtype}, "
                            f"shape {tuple(torch.as_tensor(labels).shape)}")
        if int(y.min()) < 0:
            raise DataError(f"{self.name}.fit: labels must be >= 0; got {int(y.min())}")
        return y.long()

    # --- the public interface -------------------------------------------------------------------------

    def fit(self, *, labels: Any = None, **inputs: Any) -> OODDetector:
        """Fit on in-distribution training data (``features=``, ``logits=``, ``tokens=``) and return ``self``."""
        x = self._collect(inputs, fitting=True)
        n = next(iter(x.values())).shape[0]
        self._state, self._fitted = {}, False
        self._fit(x, self._labels(labels, n))
        self._dims = {k: v.shape[1] for k, v in x.items() if k != "tokens"}
        self._fitted = True
        return self

    def score(self, **inputs: Any) -> torch.Tensor:
        """OOD scores (N,): higher means less like the training data."""
        if not self.fitted:
            raise ModelError(f"the {self.name!r} OOD detector is not fitted: call fit(...) on in-distribution "
                             "training data first")
        return self._score(self._collect(inputs, fitting=False)).float()

    def state(self) -> dict[str, torch.Tensor]:
        """The fitted tensors (what :func:`~nnforge.explain.OODGuard.save` writes as safetensors)."""
        return {k: v.contiguous() for k, v in self._state.items()}

    @classmethod
    def from_state(cls, params: dict[str, Any], dims: dict[str, int], state: dict[str, torch.Tensor]) -> OODDetector:
        """Rebuild a fitted detector from :meth:`state`, its params and its input widths."""
        det = cls(**params)
        expected = {k for k in det.input_names if k != "tokens"}
        if set(dims) != expected:
            raise ModelError(f"{cls.name}: saved input widths {dims} do not match its inputs {sorted(expected)}")
        det._state = {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in state.items()}
        det._dims = {k: int(v) for k, v in dims.items()}
        det._fitted = True
        return det

    def _fit(self, x: dict[str, torch.Tensor], labels: torch.Tensor | None) -> None:
        """Learn from in-distribution data; detectors that read only logits (MSP, energy) learn nothing."""

    def _score(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


def build_detector(name: str, **params: Any) -> OODDetector:
    """A fresh detector registered as ``name`` with hyperparameters ``params`` (validated)."""
    return OOD_DETECTORS.get(name, where="OOD detector")(**params)


# --------------------------------------------------------------------------------------------------
# logit-based


class _Temperature(Config):
    temperature: float = Field(1.0, gt=0)


@OOD_DETECTORS.register("msp")
class MSP(OODDetector):
    """Minus the maximum softmax probability: a confident prediction counts as in-distribution."""

    name = "msp"
    inputs = ("logits",)
    Params = _Temperature
    params: _Temperature

    def _score(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return -torch.softmax(x["logits"] / self.params.temperature, dim=-1).amax(-1)


@OOD_DETECTORS.register("max-logit")
class MaxLogit(OODDetector):
    """Minus the largest logit (unnormalised: keeps the magnitude that softmax divides away)."""

    name = "max-logit"
    inputs = ("logits",)

    def _score(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return -x["logits"].amax(-1)


@OOD_DETECTORS.register("energy")
class Energy(OODDetector):
    """The free energy ``-T·logsumexp(logits / T)``: low (very negative) for in-distribution inputs."""

    name = "energy"
    inputs = ("logits",)
    Params = _Temperature
    params: _Temperature

    def _score(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        t = self.params.temperature
        return -t * torch.logsumexp(x["logits"] / t, dim=-1)


# --------------------------------------------------------------------------------------------------
# feature-based


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _precision(centered: torch.Tensor, ridge: float) -> torch.Tensor:
    """Inverse of the covariance of ``centered`` rows plus ``ridge`` times the mean variance on the diagonal.

    The ridge is relative to the average eigenvalue so that it means the same for features of any scale.
    """
    n, d = centered.shape
    cov = centered.T @ centered / max(1, n - 1)
    cov = cov + ridge * max(float(torch.trace(cov)) / d, 1e-12) * torch.eye(d, dtype=cov.dtype)
    return torch.linalg.pinv(cov, hermitian=True)


def _sq_dist(x: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distances (N, K) from rows of ``x`` (N, D) to ``means`` (K, D)."""
    diff = x[:, None, :] - means[None, :, :]  # (N, K, D)
    return torch.einsum("nkd,de,nke->nk", diff, precision, diff)


class _GaussianParams(Config):
    ridge: float = Field(1e-3, ge=0, description="added to the covariance, relative to the mean variance")
    normalize: bool = Field(False, description="L2-normalise features before fitting and scoring")


class _MahalanobisParams(_GaussianParams):
    class_conditional: bool = Field(True, description="one mean per class (needs labels) or one for all")


def _class_means(x: torch.Tensor, labels: torch.Tensor, where: str,
                 min_classes: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class means (K, D) of the classes present, and the rows centred on their own class mean."""
    classes = torch.unique(labels)
    if len(classes) < min_classes:
        raise DataError(f"{where}: the labels hold {len(classes)} class(es) ({classes.tolist()}); this detector "
                        f"needs at least {min_classes}: with one class its class and background Gaussians "
                        "coincide and every score is 0")
    means = torch.stack([x[labels == c].mean(0) for c in classes])  # (K, D)
    index = torch.searchsorted(classes, labels)
    return means, x - means[index]


@OOD_DETECTORS.register("mahalanobis")
class Mahalanobis(OODDetector):
    """Smallest squared Mahalanobis distance to a class mean, one covariance shared by the classes."""

    name = "mahalanobis"
    Params = _MahalanobisParams
    params: _MahalanobisParams

    def _fit(self, x: dict[str, torch.Tensor], labels: torch.Tensor | None) -> None:
        p = self.params
        f = _normalize(x["features"]) if p.normalize else x["features"]
        if p.class_conditional:
            if labels is None:
                raise DataError("mahalanobis.fit: class_conditional=True needs labels=...; pass labels or build "
                                "the detector with class_conditional=False (one Gaussian for all training data)")
            means, centered = _class_means(f, labels, "mahalanobis.fit")
        else:
            means = f.mean(0, keepdim=True)
            centered = f - means
        self._state = {"means": means, "precision": _precision(centered, p.ridge)}

    def _score(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        f = _normalize(x["features"]) if self.params.normalize else x["features"]
        return _sq_dist(f, self._state["means"], self._state["precision"]).amin(-1)


@OOD_DETECTORS.register("relative-mahalanobis")
class RelativeMahalanobis(OODDetector):
    """Class distance minus the distance under one background Gaussian of all training data."""

    name = "relative-mahalanobis"
    needs_labels = True
    Params = _GaussianParams
    params: _GaussianParams

    def _fit(self, x: dict[str, torch.Tensor], labels: torch.Tensor | None) -> None:
        assert labels is not None  # checked by fit (needs_labels)
        p = self.params
        f = _normalize(x["features"]) if p.normalize else x["features"]
        means, centered = _class_means(f, labels, "relative-mahalanobis.fit", min_classes=2)
        mean0 = f.mean(0, keepdim=True)
        self._state = {"means": means, "precision": _precision(centered, p.ridge),
                       "mean0": mean0, "precision0": _precision(f - mean0, p.ridge)}

    def _score(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        s = self._state
        f = _normalize(x["features"]) if self.params.normalize else x["features"]
        return (_sq_dist(f, s["means"], s["precision"]) - _sq_dist(f, s["mean0"], s["precision0"])).amin(-1)


class _KNNParams(Config):
    k: int = Field(10, ge=1, description="which nearest neighbour's distance is the score")


@OOD_DETECTORS.register("knn")
class KNN(OODDetector):
    """Euclidean distance to the k-th nearest training example, features L2-normalised (cosine)."""

    name = "knn"
    Params = _KNNParams
    params: _KNNParams

    def _fit(self, x: dict[str, torch.Tensor], labels: torch.Tensor | None) -> None:
        bank = _normalize(x["features"])
        if bank.shape[0] < self.params.k:
            raise DataError(f"knn.fit: k={self.params.k} needs at least k training rows; "
                            f"got {bank.shape[0]}")
        self._state = {"bank": bank}

    def _score(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        # Scoring one input reads the whole bank (a memory-bound product): in float32, laid out (D, N), that is
        # half the bytes of the float64 rows and twice as fast; cosines in float32 are exact to ~1e-7.
        bank, k = self._state["bank"], self.params.k
        cached = getattr(self, "_bank_t", None)
        if cached is None or cached[0] is not bank:  # made once per fitted (or loaded) bank
            cached = self._bank_t = (bank, bank.T.float().contiguous())
        out = []
        for chunk in _normalize(x["features"]).float().split(1024):
            sim = chunk @ cached[1]  # (n, N) cosine similarities
            kth = sim.topk(k, dim=-1).values[:, -1]
            out.append(torch.sqrt((2 - 2 * kth.double()).clamp_min(0)))
        return torch.cat(out)


class _SubspaceParams(Config):
    dim: int | None = Field(None, ge=1, description="principal subspace size; None: half the feature width")


def _principal(features: torch.Tensor, dim: int | None, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The training mean (D,) and a basis (D, D - dim) of the directions outside the top ``dim`` components."""
    d = features.shape[1]
    k = d // 2 if dim is None else dim
    if k >= d:
        raise ConfigError(f"{where}: dim must be smaller than the feature width {d}; got {k}")
    mean = features.mean(0)
    _, _, vh = torch.linalg.svd(features - mean, full_matrices=True)  # rows of vh: principal directions
    return mean, vh[k:].T.contiguous()


@OOD_DETECTORS.register("residual")
class Residual(OODDetector):
    """Norm of the feature outside the top principal subspace of the training features."""

    name = "residual"
    Params = _SubspaceParams
    params: _SubspaceParams

    def _fit(self, x: dict[str, torch.Tensor], labels: torch.Tensor | None) -> None:
        mean, basis = _principal(x["features"], self.params.dim, "residual.fit")
        self._state = {"mean": mean, "basis": basis}

    def _score(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return ((x["features"] - self._state["mean"]) @ self._state["basis"]).norm(dim=-1)


@OOD_DETECTORS.register("vim")
class ViM(OODDetector):
    """Virtual-logit matching: ``alpha·residual - logsumexp(logits)``, alpha matching the two scales.

    Wang et al. (2022) centre on the head's origin ``-pinv(W)·b``; here the centre is the training mean,
    so that the detector needs only features and logits. The score is monotone in the virtual class's
    softmax probability ``exp(v) / (exp(v) + Σ exp(logits))``.

    ``alpha = mean(max logit - mean logit) / mean(residual)`` over the training rows. The paper divides the
    mean *max logit* by the mean residual; that depends on the logits' offset: adding a constant ``c`` to every
    logit (a head bias of -1 everywhere) changes no prediction or probability, but made alpha negative once
    the max logits averaged below zero, inverting the detector (AUROC 1.0 -> 0.0). The max logit measured
    from each row's mean logit does not move with ``c`` and is never negative, so alpha is positive (unless
    every training row's logits are all equal) and the ranking of scores is invariant to a constant shift
    (``logsumexp`` moves by the same ``c`` for every input).
    """

    name = "vim"
    inputs = ("features", "logits")
    Params = _SubspaceParams
    params: _SubspaceParams

    def _fit(self, x: dict[str, torch.Tensor], labels: torch.Tensor | None) -> None:
        mean, basis = _principal(x["features"], self.params.dim, "vim.fit")
        residual = ((x["features"] - mean) @ basis).norm(dim=-1)
        logits = x["logits"]
        spread = (logits.amax(-1) - logits.mean(-1)).mean()  # >= 0, invariant to a constant logit shift
        alpha = spread.clamp_min(1e-12) / residual.mean().clamp_min(1e-12)
        self._state = {"mean": mean, "basis": basis, "alpha": alpha.reshape(1)}

    def _score(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        s = self._state
        virtual = s["alpha"] * ((x["features"] - s["mean"]) @ s["basis"]).norm(dim=-1)
        return virtual - torch.logsumexp(x["logits"], dim=-1)
