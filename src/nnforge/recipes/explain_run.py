"""Explaining a finished run's predictions (``nnforge explain``, the ``explain`` step, the server's
``/v1/explain``): the examples, their attributions, how typical each input is by the run's own OOD guard,
the nearest training examples, the one-page HTML, and the ledger record of what was computed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnforge.errors import DataError

__all__ = ["Example", "pick_examples", "explain_examples", "record_explanations", "input_sha256", "data_attribution"]


class Example:
    """One input to explain and where it came from (``source``: ``"text"``, ``"test[12]"``, ``"rows[3]"``)."""

    def __init__(self, value: Any, source: str, label: int | None = None) -> None:
        self.value, self.source, self.label = value, source, label


def pick_examples(model: Any, splits: dict[str, Any], dataset: Any, *, texts: list[str] | None = None,
                  indices: list[int] | None = None, split: str = "test") -> list[Example]:
    """``texts`` given by the user, or ``indices`` into the run's ``split`` (its test split by default)."""
    from nnforge.data import CharCorpus

    if texts:
        return [Example(t, "text") for t in texts]
    if not indices:
        raise DataError("give a text (--text) or the index of a test example (--index)")
    if isinstance(dataset, CharCorpus):
        ids = dataset.val
        block = int(model.config.block_size)
        out = []
        for i in indices:
            if not 0 <= i < len(ids) - block:
                raise DataError(f"--index {i}: the validation text has windows 0..{len(ids) - block - 1}")
            out.append(Example(ids[i : i + block], f"val[{i}:{i + block}]"))
        return out
    if split in splits and hasattr(splits[split], "texts"):
        sp = splits[split]
        n = len(sp.texts)
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise DataError(f"--index {bad[0]}: the {split} split has examples 0..{n - 1}")
        return [Example(sp.texts[i], f"{split}[{i}]", int(sp.labels[i])) for i in indices]
    if split not in dataset.splits:
        raise DataError(f"the run's data has no split {split!r}; it has {sorted(dataset.splits)}")
    xs, ys = dataset.splits[split][0], dataset.splits[split][1]
    bad = [i for i in indices if not 0 <= i < len(xs)]
    if bad:
        raise DataError(f"--index {bad[0]}: the {split} split has examples 0..{len(xs) - 1}")
    return [Example(torch.as_tensor(np.asarray(xs[i]), dtype=torch.float32), f"{split}[{i}]", int(ys[i]))
            for i in indices]


def _typicality(guard_dir: Path | None, model: Any, texts: list[str]) -> list[dict[str, Any] | None]:
    if guard_dir is None or not (guard_dir / "guard.json").is_file():
        return [None] * len(texts)
    from nnforge.explain import OODGuard, TextFeatures

    guard = OODGuard.load(guard_dir, featurizer=TextFeatures(model))
    result = guard(texts)
    return [{"score": float(s), "threshold": guard.threshold, "in_range": not bool(o),
             "detector": guard.detector.name} for s, o in zip(result.scores.tolist(), result.is_ood.tolist(),
                                                               strict=True)]


def _neighbours(model: Any, texts: list[str], train: Any, label_names: list[str], k: int,
                bank: torch.Tensor | None = None) -> list[list[dict[str, Any]]]:
    """The ``k`` training passages nearest to each text in ``model``'s sentence embedding (cosine); ``bank``: the
    training passages' embeddings by that model when already computed (the evaluate step's)."""
    if train is None or not hasattr(train, "texts") or k <= 0:
        return [[] for _ in texts]
    if bank is None or len(bank) != len(train.texts):
        bank = model.embed(list(train.texts))
    query = model.embed(texts)
    sims = query @ bank.T
    out = []
    for row in sims:
        top = torch.topk(row, min(k, len(bank))).indices.tolist()
        out.append([{"kind": "nearest", "text": train.texts[j], "index": j, "score": float(row[j]),
                     "label": label_names[train.labels[j]] if label_names else str(train.labels[j])} for j in top])
    return out


def _attention(model: Any, text: str) -> list[float] | None:
    """How much the encoder's last layer attended to each token, averaged over heads and query positions;
    None when the encoder does not return attention weights."""
    b = model.tokenize([text])
    try:
        with torch.no_grad():
            out = model.encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_attentions=True)
    except (TypeError, ValueError):
        return None
    att = getattr(out, "attentions", None)
    if not att or att[-1] is None:
        return None
    return att[-1][0].float().mean(dim=(0, 1)).tolist()  # (heads, Tq, Tk) -> (Tk,)


def explain_examples(model: Any, examples: list[Example], config: Any, *, label_names: list[str] | None = None,
                     vocab: str | None = None, guard_dir: Path | None = None, train: Any = None,
                     neighbours: int = 3, provenance: dict[str, Any] | None = None,
                     embedder: Any = None, bank: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Attribute each example with ``config`` and assemble its one-page explanation: ``[{"example", "attribution"
    (an Attribution), "typicality", "neighbours", "page" (HTML)}]``. Nearest training passages are found in
    ``embedder``'s embedding (default: the model's own; ``bank``: its training embeddings, when computed)."""
    from nnforge.explain.attribution import attribute, explanation_page
    from nnforge.models import family_of

    family = family_of(model)
    if family == "text-classifier":
        values: Any = [e.value for e in examples]
    elif family == "char-lm":
        values = torch.stack([torch.as_tensor(e.value) for e in examples])
    else:
        values = torch.stack([torch.as_tensor(e.value).float() for e in examples])
    attributions = attribute(model, values, config, label_names=label_names, vocab=vocab)
    texts = values if family == "text-classifier" else None
    typical = _typicality(guard_dir, model, texts) if texts else [None] * len(examples)
    near = (_neighbours(embedder or model, texts, train, label_names or [], neighbours, bank) if texts
            else [[] for _ in examples])
    out = []
    for e, a, t, n in zip(examples, attributions, typical, near, strict=True):
        att = _attention(model, e.value) if texts else None
        page = explanation_page(a, typicality=t, neighbours=n, attention=att,
                                provenance={**(provenance or {}), "input": e.source})
        out.append({"example": e, "attribution": a, "typicality": t, "neighbours": n, "page": page})
    return out


def input_sha256(value: Any) -> str:
    if isinstance(value, str):
        return hashlib.sha256(value.encode("utf-8")).hexdigest()
    return hashlib.sha256(np.ascontiguousarray(torch.as_tensor(value).numpy()).tobytes()).hexdigest()


def record_explanations(ledger: Any, results: list[dict[str, Any]], *, used: dict[str, Any], run_id: str,
                        pages: list[Path | None]) -> list[dict[str, Any]]:
    """One ``model.explained`` event per explanation: what was explained (input by sha256 and source), with which
    method and settings, the answer, its strongest units, the completeness reached, and the page written."""
    from nnforge.ledger import file_sha256

    events = []
    for r, page in zip(results, pages, strict=True):
        a, e = r["attribution"], r["example"]
        event = {**used, "kind": "feature-attribution", "method": a.method, "settings": a.settings,
                 "input": {"source": e.source, "sha256": input_sha256(e.value)}, "target": a.target,
                 "target_label": a.target_label, "probability": a.probabilities[a.target],
                 "completeness_error": a.completeness_error,
                 "top_positive": [{"unit": u, "score": round(s, 6)} for _, u, s in a.top(5)],
                 "top_negative": [{"unit": u, "score": round(s, 6)} for _, u, s in a.top(5, sign=-1)],
                 "typicality": r["typicality"], "extras": json.loads(json.dumps(a.extras, default=str))}
        if page is not None:
            event["page"] = {"path": str(page), "sha256": file_sha256(page)}
        events.append(event)
    ledger.append_many([("model.explained", ev, run_id, None) for ev in events])
    return events


def _as_linear(head: Any) -> torch.nn.Linear:
    """A float ``nn.Linear`` equal to ``head`` (a Linear, or a quantized one run with float activations):
    ``b = head(0)``, ``Wᵀ = head(I) − b``."""
    from nnforge.compress import float_activations

    width = int(head.in_features)
    with torch.no_grad(), float_activations(head):
        b = head(torch.zeros(1, width)).float()[0]
        w = (head(torch.eye(width)).float() - b).T.contiguous()
    lin = torch.nn.Linear(width, int(w.shape[0]))
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return lin


def data_attribution(model: Any, splits: dict[str, Any], dataset: Any, examples: list[Example], *, method: str,
                     top: int, split: str, checkpoints: list[Any] | None = None) -> list[dict[str, Any]]:
    """The training examples that most helped and most harmed the model's answer to each example
    (:func:`nnforge.explain.data.attribute_data`, the answer's class as the target).

    A text classifier is attributed through its head on the training passages' sentence embeddings (the last
    layer, as TRAK's last-layer variant: a 22M-parameter encoder's per-example gradients are out of reach on a
    CPU); tensor classifiers through all their float parameters. Returns per example ``{"example", "answer",
    "helpful": [{"index", "score", "label", "text"}], "harmful": [...], "scope"}``.
    """
    from nnforge.errors import ConfigError
    from nnforge.explain.data import DataAttributionConfig, attribute_data, preview_example
    from nnforge.models import family_of

    family = family_of(model)
    if family == "char-lm":
        raise ConfigError("explain data needs a classifier; a char-LM's training data is one text, not examples")
    if method == "tracin" and not checkpoints:
        raise ConfigError("TracIn reads the training loop's checkpoints and this run kept none: use --method trak "
                          "(one trained model), or train with checkpoint_dir and call attribute_data "
                          "(docs/explain.md)")
    model.eval()
    if family == "text-classifier":
        train = splits["train"]
        x_train, y_train = model.embed(list(train.texts)), torch.as_tensor(train.labels)
        x_query = model.embed([e.value for e in examples])
        subject: Any = _as_linear(model.head)
        texts: list[Any] = list(train.texts)
        labels_of = [int(v) for v in train.labels]
        scope = "the head, on the training passages' sentence embeddings (TRAK's last-layer variant)"
    else:
        if split not in dataset.splits:
            raise DataError(f"the run's data has no training split {split!r}; it has {sorted(dataset.splits)}")
        xs, ys = dataset.splits[split][:2]
        x_train = torch.as_tensor(np.asarray(xs), dtype=torch.float32)
        y_train = torch.as_tensor(np.asarray(ys))
        x_query = torch.stack([torch.as_tensor(e.value).float() for e in examples])
        subject, texts, labels_of = model, list(x_train), [int(v) for v in y_train]
        scope = "every float parameter"
    with torch.no_grad():
        answers = subject(x_query).argmax(-1)
    config = DataAttributionConfig(method=method)
    scores = attribute_data(checkpoints or subject, (x_train, y_train), (x_query, answers), config)
    out = []
    for q, e in enumerate(examples):
        found = scores.top(q, k=top)

        def rows(pairs: Any) -> list[dict[str, Any]]:
            return [{"index": int(i), "score": float(s), "label": labels_of[int(i)],
                     "text": preview_example(texts[int(i)])} for i, s in pairs]

        out.append({"example": e, "answer": int(answers[q]), "helpful": rows(found.helpful),
                    "harmful": rows(found.harmful), "scope": scope, "settings": config.model_dump(mode="json")})
    return out
