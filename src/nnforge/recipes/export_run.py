"""Exporting a finished run's model (``nnforge export``, the ``export`` step): the real inputs it is verified on,
and the export itself with its ledger record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["verification_inputs", "export_variant"]


def _texts_sha256(texts: list[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()


def verification_inputs(recipe: Any, splits: dict[str, Any], dataset: Any, family: str, n: int,
                        block_size: int | None, run_id: str) -> tuple[Any, dict[str, Any]]:
    """Up to ``n`` real inputs from a run's data (``load_data``'s splits and dataset), spread evenly over its test
    split (a character corpus: seeded windows of its validation text), and what they were."""
    import hashlib

    import numpy as np
    import torch

    from nnforge.data import CharCorpus, TextClassification
    from nnforge.errors import DataError

    if isinstance(dataset, CharCorpus):
        if family != "char-lm" or not block_size:
            raise DataError(f"run {run_id}: its data is a character corpus but its model is a {family}")
        x, _ = dataset.batch("val", n, min(block_size, len(dataset.val) - 2), torch.Generator().manual_seed(0))
        return x, {"split": "val", "windows": len(x), "tokens": int(x.shape[1]), "seed": 0,
                   "sha256": hashlib.sha256(x.numpy().tobytes()).hexdigest()}
    if isinstance(dataset, TextClassification) or hasattr(splits.get("test"), "texts"):
        texts = list(splits["test"].texts)
        if family != "text-classifier":
            raise DataError(f"run {run_id}: its data is text but its model is a {family}")
        pick = np.unique(np.linspace(0, len(texts) - 1, min(n, len(texts))).round().astype(int)).tolist()
        chosen = [texts[i] for i in pick]
        return chosen, {"split": recipe.data.test_split, "texts": len(chosen), "sha256": _texts_sha256(chosen)}
    split = recipe.data.test_split
    if split not in dataset.splits:
        raise DataError(f"run {run_id}: its data has no split {split!r} to verify the export on; it has "
                        f"{sorted(dataset.splits)}")
    xs = np.asarray(dataset.splits[split][0])
    pick = np.unique(np.linspace(0, len(xs) - 1, min(n, len(xs))).round().astype(int))
    x = torch.from_numpy(xs[pick]).float()
    return x, {"split": split, "rows": len(x), "sha256": hashlib.sha256(x.numpy().tobytes()).hexdigest()}


def export_variant(model: Any, folder: Path, *, recipe: Any, splits: dict[str, Any], dataset: Any, config: Any,
                   verify: int, label_names: list[str] | None, source: dict[str, Any], run_id: str,
                   ledger: Any) -> tuple[Any, dict[str, Any]]:
    """Export ``model`` into ``folder`` with :func:`nnforge.deploy.export.export_model`, verified on
    :func:`verification_inputs`, and record ``model.exported`` in ``ledger``; returns the result and the event."""
    from nnforge.deploy.export import export_model, family_of

    family = family_of(model)
    block = getattr(getattr(model, "config", None), "block_size", None)
    inputs, about = verification_inputs(recipe, splits, dataset, family, verify, block, run_id)
    result = export_model(model, folder, inputs, config, label_names=label_names or None, family=family,
                          source=source)
    m = result.manifest
    check = {k: m["verification"][k] for k in ("inputs", "compared", "max_abs_logit_diff", "max_abs_logit",
                                               "rel_logit_diff", "argmax_agreement", "tolerance", "passed")}
    event = {**source, "format": config.format, "int8_matmul": config.int8_matmul, "family": family,
             "folder": str(Path(folder).resolve()), "files": result.files, "opset": m["opset"],
             "operators": m["operators"], "versions": m["versions"], "inputs": about, "verification": check}
    ledger.append("model.exported", event, run=run_id)
    return result, event
