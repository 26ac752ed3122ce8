"""Building models from recipe specs, and loading finished runs back (``nnforge.load_run``).

A model variant is rebuilt from its spec — a pretrained source or registered architecture, the head
size, and the transforms applied in order (each a registered config) — then its safetensors state is
loaded strictly. Nothing named in a file can execute code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnforge.errors import ConfigError, IntegrityError, ModelError
from nnforge.runs import NATIVE_SUFFIX, find_run, read_config, read_metrics, variant_path

__all__ = ["build_base", "rebuild", "load_variant", "Run", "load_run", "find_run"]


def build_base(source: dict[str, Any], num_classes: int | None, seed: int = 0) -> nn.Module:
    """The untrained or pretrained base named by a model source (see :class:`~nnforge.recipes.schema.ModelSpec`)."""
    from nnforge import models

    opts = dict(source.get("options") or {})
    if source.get("name"):
        from nnforge.models import PRETRAINED, check_options

        check_options(PRETRAINED.get(source["name"], where="model.name"), opts,
                      f"model.options of pretrained model {source['name']!r}", fixed=("num_classes", "seed"))
        return models.load(source["name"], num_classes=num_classes or 2, seed=seed, **opts)  # type: ignore[return-value]
    if source.get("hf_dir"):
        from nnforge.models import check_options
        from nnforge.models.text import load_hf_dir

        check_options(load_hf_dir, opts, "model.options of an hf_dir model", fixed=("path", "num_classes", "seed"))
        return load_hf_dir(source["hf_dir"], num_classes or 2, seed=seed, **opts)
    if source.get("architecture"):
        import nnforge.moe  # noqa: F401  (registers "moe-gpt")

        model = models.build(source["architecture"], **opts)
        if source.get("safetensors"):
            from nnforge.models.checkpoint import load_weights

            tensors, _ = load_weights(source["safetensors"])
            _load_strict(model, tensors, where=str(source["safetensors"]))
        return model
    raise ModelError(f"model source {source} names no pretrained model, folder or architecture")


def rebuild(spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a saved variant: base, transforms in order, then the saved state (strict)."""
    from nnforge.compress import apply_
    from nnforge.config import load_config

    if not isinstance(spec, dict) or "base" not in spec:
        raise IntegrityError("the weights file carries no nnforge spec; it was not written by nnforge")
    transforms = spec.get("transforms", [])
    if not isinstance(spec["base"], dict) or not isinstance(transforms, list):
        raise IntegrityError("the weights file's nnforge spec is malformed: 'base' must be an object and "
                             "'transforms' a list")
    num_classes = spec.get("num_classes")
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                    or num_classes < 1):
        raise IntegrityError(f"the weights file's nnforge spec is malformed: num_classes {num_classes!r}")
    model = build_base(spec["base"], num_classes, seed=0)
    for i, doc in enumerate(transforms):
        apply_(model, load_config(doc, where=f"transforms[{i}]"), skeleton=True)  # shapes only; state loads next
    _load_strict(model, tensors, where="the weights file")
    return model.eval()


def _load_strict(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Load ``tensors`` into ``model``: no unexpected keys, no missing ones except tied weights."""
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise IntegrityError(f"{where} does not fit the model: {str(exc)[:400]}") from None
    if unexpected:
        raise IntegrityError(f"{where} has tensors the model does not: {unexpected[:5]}")
    state = model.state_dict(keep_vars=True)
    loaded = {id(p) for k, p in state.items() if k in tensors}
    untied = [k for k, p in state.items() if k in missing and id(p) not in loaded]
    if untied:
        raise IntegrityError(f"{where} lacks tensors the model needs: {untied[:5]}")


def load_variant(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    from nnforge.models.checkpoint import load_weights

    tensors, spec = load_weights(path)
    return rebuild(spec, tensors), spec


@dataclass
class Run:
    """A finished run: its folder, config, metrics and (lazily) its model variants.

    ``ledger`` is the ledger that recorded the run (checked by :func:`load_run`); :meth:`predict` and
    :meth:`embed` record each use there as a ``model.used`` event, as ``nnforge predict`` does.
    """

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    _models: dict[str, nn.Module] = field(default_factory=dict, repr=False)
    ledger: str | None = None
    actor: str | None = None
    recorded: dict[str, str] = field(default_factory=dict, repr=False)  # weights file -> sha256 the ledger holds

    @property
    def run_id(self) -> str:
        return str(self.config.get("run_id", self.path.name))

    @property
    def variants(self) -> dict[str, str]:
        return dict(self.config.get("variants", {}))

    @property
    def label_names(self) -> list[str]:
        return list(self.config.get("label_names", []))

    def variant_file(self, variant: str) -> Path:
        """The weights file of ``variant``; a runtime variant (``int8-native``) reads its saved variant's file.

        Raises:
            ConfigError: the run has no such variant.
        """
        name = variant
        if name not in self.variants and name.endswith(NATIVE_SUFFIX):
            name = name[: -len(NATIVE_SUFFIX)]
        if name not in self.variants:
            raise ConfigError(f"run {self.path} has no variant {variant!r}; it has {sorted(self.variants)} "
                              f"(an int8 one also as '<variant>{NATIVE_SUFFIX}', in the native runtime)")
        return variant_path(self.path, name, self.variants[name])

    def model(self, variant: str | None = None) -> nn.Module:
        """The model of ``variant`` (default: the run's final model).

        ``"<variant>-native"`` is the saved variant with its encoder in nnforge's native runtime
        (:mod:`nnforge.deploy.native`: int8 BERT-family encoders), a ConfigError saying why where it cannot run.
        """
        name = variant or self.config.get("final_variant") or next(iter(self.variants), None)
        if name is None:
            raise ModelError(f"run {self.path} saved no model")
        path = self.variant_file(name)
        if name not in self._models:
            if name in self.variants:
                self._check_unchanged(path)
                self._models[name] = load_variant(path)[0]
            else:
                from nnforge.deploy.native import native_variant

                fast, why = native_variant(self.model(name[: -len(NATIVE_SUFFIX)]))
                if fast is None:
                    raise ConfigError(f"variant {name!r} of run {self.path}: {why}")
                self._models[name] = fast
        return self._models[name]

    def _check_unchanged(self, path: Path) -> None:
        """The weights must still be the bytes :func:`load_run` checked (they may change between load and use)."""
        want = self.recorded.get(str(path))
        if want is None:
            return
        from nnforge.ledger import file_sha256

        if file_sha256(path) != want:
            raise IntegrityError(f"{path}: changed since the run was loaded (sha256 differs from the one the ledger "
                                 "recorded); load the run again (allow_modified=True to use altered files)")

    def predict(self, texts: list[str], variant: str | None = None, *, record: bool = True) -> list[dict[str, Any]]:
        """Label and class probabilities for each text; the use is recorded in the run's ledger (``model.used``;
        ``record=False`` for a caller that records it itself, as the CLI does)."""
        model: Any = self.model(variant)
        if not hasattr(model, "predict_proba"):
            raise ModelError("this run's model is not a text classifier")
        probs = model.predict_proba(texts)
        names = self.label_names or [str(i) for i in range(probs.shape[1])]
        rows = [{"text": t, "label": names[int(p.argmax())], "confidence": float(p.max()),
                 "probabilities": {n: float(x) for n, x in zip(names, p.tolist(), strict=True)}}
                for t, p in zip(texts, probs, strict=True)]
        if record:
            from collections import Counter

            self._record("predict", variant, texts, dict(Counter(str(r["label"]) for r in rows)))
        return rows

    def embed(self, texts: list[str], variant: str | None = None, *, record: bool = True) -> torch.Tensor:
        """L2-normalised embeddings of ``texts`` (the use recorded as :meth:`predict`'s is)."""
        model: Any = self.model(variant)
        if not hasattr(model, "embed"):
            raise ModelError("this run's model has no embedding function")
        vectors = model.embed(texts)
        if record:
            self._record("embed", variant, texts, {"vectors": len(texts), "dims": int(vectors.shape[-1])})
        return vectors

    def used(self, variant: str | None = None) -> dict[str, Any]:
        """The run, variant and weights file (by sha256) a use of ``variant`` reads."""
        from nnforge.ledger import file_sha256

        name = variant or self.config.get("final_variant") or next(reversed(self.variants))
        path = self.variant_file(name)
        return {"run": self.run_id, "variant": name, "weights": str(path), "weights_sha256": file_sha256(path)}

    def _record(self, call: str, variant: str | None, texts: list[str], results: dict[str, Any]) -> None:
        if self.ledger is None:
            return  # a run loaded with allow_modified and no ledger: there is no record to add to
        import hashlib

        from nnforge.ledger import Ledger

        h = hashlib.sha256()
        for t in texts:
            h.update(t.encode("utf-8") + b"\0")
        with Ledger.open(self.ledger, actor=self.actor) as led:
            led.append("model.used", {"call": call, "via": "python", **self.used(variant),
                                      "inputs": {"texts": len(texts), "sha256": h.hexdigest()}, "results": results},
                       run=self.run_id)


def load_run(run: str | os.PathLike[str], runs_dir: str | os.PathLike[str] = "runs", *,
             ledger: str | os.PathLike[str] | None = None, allow_modified: bool = False,
             actor: str | None = None, use: str = "load") -> Run:
    """Load a finished run from its folder or id, after checking every file it recorded against its ledger.

    Args:
        ledger: the ledger that recorded the run (default: ``NNFORGE_LEDGER``, ``.nnforge/ledger.db`` here, or
            the one the run's config.json names — the first that recorded the run).
        allow_modified: use the run even when a file differs from the record (or no ledger records the run);
            the choice is recorded as an ``integrity.overridden`` event.
        actor: who uses the run (recorded with each use; default: the OS user).
        use: what the run is loaded for, as the refusal and the override event name it.

    Raises:
        IntegrityError: a recorded file (weights, metrics.json, …) is not the bytes the ledger recorded, or no
            ledger records the run (see :mod:`nnforge.govern.integrity`).
    """
    from nnforge.govern.integrity import verify_run

    path = find_run(run, runs_dir)
    check = verify_run(path, use=use, ledger=ledger, allow_modified=allow_modified, actor=actor)
    return Run(path, read_config(path), read_metrics(path), ledger=check.ledger, actor=actor,
               recorded={} if allow_modified else check.recorded)
