"""``attribute(model, inputs, AttributionConfig(...))``: one :class:`Attribution` per input, any model family.

    from nnforge.explain import AttributionConfig, attribute
    [a] = attribute(model, ["Now is the winter of our discontent"], AttributionConfig())
    a.top(5)                  # the five units (tokens, pixels) that pushed the prediction up most
    a.completeness_error      # integrated gradients: |Σ scores − (f(x) − f(baseline))| / |f(x) − f(baseline)|

The model is explained in eval mode (dropout off) and left in the mode it was in. Each input is explained
on its own, so memory stays that of one input times ``internal_batch_size`` interpolation points.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nnforge.errors import ConfigError, MissingDependencyError
from nnforge.explain.attribution._registry import ATTRIBUTION_METHODS
from nnforge.explain.attribution._subject import Subject, subject_of
from nnforge.explain.attribution.config import AttributionConfig

__all__ = ["Attribution", "attribute"]


@dataclass
class Attribution:
    """The explanation of one prediction.

    ``units`` name what the scores are about (word pieces, characters, pixels), ``scores`` say how much each
    pushed the explained output (``target``'s logit or probability) up (positive) or down (negative);
    units that are not input (padding, [CLS]/[SEP]) score 0 and ``real`` is False for them.
    """

    method: str
    family: str
    target: int
    target_label: str
    probabilities: list[float]
    units: list[str]
    scores: list[float]
    real: list[bool]
    settings: dict[str, Any]
    image_shape: tuple[int, int] | None = None
    pixels: list[float] | None = None  # the input image's values (images), for drawing
    text: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def completeness_error(self) -> float | None:
        value = self.extras.get("completeness_error")
        return None if value is None else float(value)

    def top(self, k: int = 5, *, sign: int = 1) -> list[tuple[int, str, float]]:
        """The ``k`` real units with the largest (``sign=1``) or most negative (``sign=-1``) scores:
        ``(position, unit, score)``."""
        order = sorted((i for i, r in enumerate(self.real) if r), key=lambda i: -sign * self.scores[i])
        return [(i, self.units[i], self.scores[i]) for i in order[:k]]

    def to_dict(self, *, top: int | None = None) -> dict[str, Any]:
        """JSON-ready; ``top=k`` keeps only the k most positive and k most negative units (ledger events)."""
        doc: dict[str, Any] = {"method": self.method, "family": self.family, "target": self.target,
                               "target_label": self.target_label, "probabilities": self.probabilities,
                               "settings": self.settings, "extras": self.extras, "seconds": round(self.seconds, 4)}
        if self.text is not None:
            doc["text"] = self.text
        if top is None:
            doc.update(units=self.units, scores=self.scores, real=self.real, image_shape=self.image_shape,
                       pixels=self.pixels)
        else:
            doc["top_positive"] = [{"position": i, "unit": u, "score": s} for i, u, s in self.top(top)]
            doc["top_negative"] = [{"position": i, "unit": u, "score": s} for i, u, s in self.top(top, sign=-1)]
        return doc


@contextmanager
def _explaining(model: nn.Module) -> Iterator[None]:
    from nnforge.models.text import eval_mode

    with eval_mode(model), torch.enable_grad():  # every module's own mode back afterwards
        yield


def _captum() -> None:
    try:
        import captum  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("feature attribution needs Captum: pip install 'nnforge[explain]'") from exc


def attribute(model: nn.Module, inputs: Any, config: AttributionConfig | None = None, *,
              label_names: list[str] | None = None, vocab: str | None = None,
              image_shape: tuple[int, int] | None = None) -> list[Attribution]:
    """Explain ``model``'s prediction on each of ``inputs`` with ``config.method``.

    Args:
        model: a text classifier, char-GPT, digits model or any module mapping a float tensor to logits.
        inputs: texts (text classifier), character ids (N, T) (char-LM: the next character after each row is
            explained), or a float tensor (N, ...).
        config: the method and its settings (default: integrated gradients on the predicted class's logit).
        label_names: class names for the explanations (char-LM: ``vocab`` names the characters).
        image_shape: (height, width) of image inputs given flat (digits are found by themselves).

    Raises:
        DataError: inputs the model's family cannot be explained on.
        ConfigError: an unknown method, a target outside the model's outputs, an unusable layer.
        MissingDependencyError: Captum is not installed.
    """
    _captum()
    config = config or AttributionConfig()
    method = ATTRIBUTION_METHODS.get(config.method, where="AttributionConfig.method")
    out: list[Attribution] = []
    with _explaining(model):
        subject = subject_of(model, inputs, label_names=label_names, vocab=vocab, image_shape=image_shape)
        for i in range(len(subject)):
            out.append(_one(model, subject.one(i), method, config))
    return out


def _probabilities(s: Subject) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(s.forward(s.inputs, *s.extra).float()[0], -1)


@contextmanager
def _twin(model: nn.Module, config: AttributionConfig) -> Iterator[int]:
    if config.activations == "as-deployed":
        yield 0
        return
    from nnforge.compress import float_activations

    with float_activations(model) as changed:
        yield changed


def _one(model: nn.Module, s: Subject, method: Any, config: AttributionConfig) -> Attribution:
    start = time.perf_counter()
    probs = _probabilities(s)  # the model as deployed: what its user sees
    target = int(probs.argmax()) if config.target is None else config.target
    if not 0 <= target < probs.shape[0]:
        raise ConfigError(f"target {target} is not an output of this model (0..{probs.shape[0] - 1})")
    with _twin(model, config) as changed:
        scores, extras = method(s, config, target)
        if changed:
            twin = _probabilities(s)
            extras["float_activation_twin"] = {
                "layers": changed, "argmax_agrees": bool(int(twin.argmax()) == int(probs.argmax())),
                "max_probability_diff": round(float((twin - probs).abs().max()), 6)}
    names = s.label_names
    label = names[target] if names and target < len(names) else str(target)
    pixels = s.inputs[0].reshape(-1).tolist() if s.image_shape is not None else None
    return Attribution(config.method, s.family, target, label, [round(float(p), 6) for p in probs], s.units[0],
                       [float(v) for v in scores.reshape(-1)], [bool(r) for r in s.real[0]],
                       config.model_dump(mode="json"), s.image_shape, pixels, s.texts[0] if s.texts else None,
                       extras, time.perf_counter() - start)
