"""Benchmark: out-of-distribution detection on text, far (Python's standard library) and near (more Shakespeare).

    python benchmarks/evaluate/ood_text.py           # full: 100 passages per play, 500 OOD passages per set (~30 min)
    python benchmarks/evaluate/ood_text.py --quick   # 8 passages per play, 40 OOD passages per set (a minute or two)
    python benchmarks/evaluate/ood_text.py --smoke   # 1 passage per play, 6 OOD passages per set, LoRA on one layer; writes nothing

Four sets, each an in-distribution (ID) test split against an OOD one:

- far ``stdlib-code`` / ``stdlib-docstrings``: ID = passages of the ``shakespeare-genre`` test plays; OOD =
  4-line windows of the standard library's ``*.py`` files (every 40th non-empty line) / their docstrings of
  more than 8 words (first 60 words), from ``sysconfig.get_paths()["stdlib"]``, 500 of each drawn with seed 0.
- near ``histories``: a comedy/tragedy classifier; ID = comedy and tragedy test-play passages; OOD = 500
  passages drawn (seed 0) from the ten history plays.
- near ``poems``: the comedy/tragedy/history classifier; ID = test-play passages; OOD = 500 passages drawn
  (seed 0) from the five poem files. Nothing here is trained on ``shakespeare-char`` (it holds the poems).

Everything is fitted on ID training passages (the training plays) only; the 95%-recall thresholds come
from the ID validation plays; OOD text is only ever scored. Two feature spaces per set:

- ``frozen``: all-MiniLM-L6-v2 as shipped: the L2-normalised mean-pooled embedding (``features``), the
  mean-pooled output of its embedding layer (``layer0``), and logits of a class-balanced linear probe
  (C chosen on the validation plays); plus ``token-ngram``, a Witten-Bell n-gram model of the tokenizer's
  ids (order 1-4 chosen by perplexity on the validation plays), and ``ensemble`` (token-ngram +
  Mahalanobis on layer0 + kNN on the embedding, each standardised on held-out training rows).
- ``fine-tuned``: MiniLM fine-tuned with ``finetune_classifier`` as the quickstart does (LP-FT: probe head,
  LoRA r=8 on layers 3-5, class-balanced loss, lr 5e-4) for a fixed 2 epochs. The quickstart's validation
  early stopping keeps epoch 0 on these splits — the probe on frozen features — so it is not used here:
  the fixed schedule gives genuinely fine-tuned features; ID accuracies of both are recorded.

Per detector: AUROC (OOD positive) and FPR at 95% TPR (the fraction of OOD passages accepted when 95% of
the ID test passages are), and at the threshold chosen on the validation plays: the ID test recall and the
OOD fraction flagged. ``layer_sweep`` (AUROC of Mahalanobis and 10-NN per encoder layer) is a diagnostic.
The summary's ``best_detector`` is the best AUROC among the reported detectors of both spaces (the sweep
excluded): a maximum taken on the OOD sets themselves, so an optimistic figure; ``msp_auroc`` is the
fine-tuned classifier's MSP. ``reference`` holds a supervised history-vs-rest probe (trained with history
labels, so not a detector) as the ceiling of what MiniLM features separate; ``histories_diagnostics`` measures
why that set stays near chance (genre transfer to unseen plays, a TF-IDF supervised ceiling, the issue
anchors' protocol with in-distribution test passages drawn from the fitting plays themselves, and densities of
stylometric features — style rather than content).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, pick, write_results  # noqa: E402

RECALL = 0.95
ORDERS = (1, 2, 3, 4)
FROZEN = ["msp", "max-logit", "energy", "mahalanobis", "mahalanobis-1g", "relative-mahalanobis", "knn", "residual",
          "vim", "mahalanobis@layer0", "knn@layer0", "token-ngram", "ensemble"]
FINE_TUNED = ["msp", "max-logit", "energy", "mahalanobis", "mahalanobis-1g", "relative-mahalanobis", "knn", "residual",
              "vim"]


# --------------------------------------------------------------------------------------------------
# the passages


def stdlib_passages(n: int, seed: int = 0) -> tuple[list[str], list[str], dict[str, int]]:
    """Code windows and docstrings of the standard library (``nnforge.data.stdlib``), ``n`` of each (seeded),
    and how many there were to draw from."""
    from nnforge.data.stdlib import stdlib_texts

    sets, pools = stdlib_texts(n, seed)
    return sets["stdlib-code"], sets["stdlib-docstrings"], pools


def sample(texts: list[str], n: int, seed: int = 0) -> list[str]:
    idx = np.random.default_rng(seed).choice(len(texts), min(n, len(texts)), replace=False)
    return [texts[i] for i in sorted(idx)]


def build_sets(per_play: int, n_ood: int) -> dict[str, Any]:
    from nnforge.data.shakespeare import HISTORIES, _read, genre_dataset, passages, poem_passages, texts_dir

    d3 = genre_dataset(passages_per_play=per_play)
    d2 = genre_dataset(passages_per_play=per_play, genres=("comedy", "tragedy"))
    folder = texts_dir()
    histories = [p for play in HISTORIES for p in passages(_read(folder, play))]
    poems = [p for ps in poem_passages().values() for p in ps]
    code, docs, pools = stdlib_passages(n_ood)
    return {"3-genre": d3, "2-genre": d2, "ood": {"stdlib-code": code, "stdlib-docstrings": docs,
                                                  "histories": sample(histories, n_ood), "poems": sample(poems, n_ood)},
            "pools": {**pools, "histories": len(histories), "poems": len(poems)}}


# --------------------------------------------------------------------------------------------------
# features


def encode(model: Any, texts: list[str], layers: tuple[int, ...], batch_size: int = 64) -> dict[str, torch.Tensor]:
    """``TextFeatures`` of ``texts`` in the order given (batched by length: less padding), plus
    ``layers`` (N, L, H) stacking the requested layers' mean pools."""
    from nnforge.explain import TextFeatures

    featurize = TextFeatures(model, layers=layers, batch_size=batch_size)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    parts = [featurize([texts[j] for j in order[i : i + batch_size]]) for i in range(0, len(order), batch_size)]
    width = max(p["tokens"].shape[1] for p in parts)
    for p in parts:
        p["tokens"] = torch.nn.functional.pad(p["tokens"], (0, width - p["tokens"].shape[1]), value=-1)
    inverse = torch.argsort(torch.tensor(order))
    out = {key: torch.cat([p[key] for p in parts])[inverse] for key in parts[0]}
    if layers:
        out["layers"] = torch.stack([out[f"layer{k}"] for k in layers], 1)
    return out


def probe_logits(frozen: dict[str, dict[str, torch.Tensor]], train: Any, val: Any, num_classes: int) -> tuple[Any, dict]:
    from nnforge.adapt.probe import fit_linear_probe

    probe = fit_linear_probe(frozen["train"]["features"], train.labels, frozen["val"]["features"], val.labels,
                             num_classes=num_classes, class_weight="balanced")
    return probe, {"C": probe.C, "val_acc": probe.val_accuracy}


def fine_tune(train: Any, val: Any, num_classes: int, epochs: int, log: Any,
              layers: tuple[int, ...] = (3, 4, 5)) -> tuple[Any, dict[str, Any]]:
    """MiniLM fine-tuned as the quickstart's finetune step does (LoRA on ``layers``), for a fixed number of epochs."""
    from nnforge.adapt import FinetuneConfig, LoraConfig, apply_lora_, finetune_classifier, merge_lora_
    from nnforge.adapt.finetune import predict_labels
    from nnforge.adapt.probe import fit_linear_probe
    from nnforge.models.text import load_minilm

    model = load_minilm(num_classes, seed=0)
    probe = fit_linear_probe(model.embed(train.texts), train.labels, model.embed(val.texts), val.labels,
                             num_classes=num_classes, class_weight="balanced")
    with torch.no_grad():
        model.head.weight.copy_(probe.weight)
        model.head.bias.copy_(probe.bias)
    apply_lora_(model, LoraConfig(r=8, alpha=16, dropout=0.1, layers=layers))
    config = FinetuneConfig(epochs=epochs, batch_size=16, lr=5e-4, patience=2, class_weights="balanced", seed=0)
    # no validation texts: a fixed schedule (validation early stopping would keep epoch 0, the frozen probe)
    result = finetune_classifier(model, train.texts, train.labels, [], [], config, frozen_layers=min(layers))
    merge_lora_(model)
    model.eval()
    val_acc = float((predict_labels(model, val.texts) == torch.tensor(val.labels)).float().mean())
    log(f"fine-tuned {num_classes}-class model in {result.seconds:.0f}s, val acc {val_acc:.3f}")
    losses = [round(h["train_loss"], 4) for h in result.history]
    return model, {"seconds": result.seconds, "steps": result.steps, "epochs": epochs, "lora_layers": list(layers), "val_acc": val_acc,
                   "train_loss_per_epoch": losses, "probe_val_acc": probe.val_accuracy}


# --------------------------------------------------------------------------------------------------
# detectors


def detector_specs(order: int, vocab: int) -> dict[str, tuple[str, dict[str, Any], dict[str, str]]]:
    """name -> (registered detector, params, input routing); all hyperparameters fixed here."""
    return {
        "msp": ("msp", {}, {}), "max-logit": ("max-logit", {}, {}), "energy": ("energy", {}, {}),
        "mahalanobis": ("mahalanobis", {}, {}),
        "mahalanobis-1g": ("mahalanobis", {"class_conditional": False}, {}),
        "relative-mahalanobis": ("relative-mahalanobis", {}, {}),
        "knn": ("knn", {"k": 10}, {}), "residual": ("residual", {}, {}), "vim": ("vim", {}, {}),
        "mahalanobis@layer0": ("mahalanobis", {"class_conditional": False, "normalize": True}, {"features": "layer0"}),
        "knn@layer0": ("knn", {"k": 10}, {"features": "layer0"}),
        "token-ngram": ("token-ngram", {"order": order, "vocab_size": vocab}, {}),
        "ensemble": ("ensemble", {"members": [
            {"detector": "token-ngram", "params": {"order": order, "vocab_size": vocab}},
            {"detector": "mahalanobis", "params": {"class_conditional": False, "normalize": True},
             "inputs": {"features": "layer0"}},
            {"detector": "knn", "params": {"k": 10}}]}, {}),
    }


def inputs_for(data: dict[str, torch.Tensor], routes: dict[str, str], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {name: data[routes.get(name, name)] for name in names}


def choose_order(train_tokens: torch.Tensor, val_tokens: torch.Tensor, vocab: int) -> tuple[int, dict[int, float]]:
    """The n-gram order with the lowest mean per-token NLL on the ID validation plays."""
    from nnforge.explain import build_detector

    nll = {n: float(build_detector("token-ngram", order=n, vocab_size=vocab).fit(tokens=train_tokens)
                    .score(tokens=val_tokens).mean()) for n in ORDERS}
    return min(nll, key=lambda n: nll[n]), nll


def evaluate_space(space: dict[str, dict[str, torch.Tensor]], labels: torch.Tensor, names: list[str], order: int,
                   vocab: int, oods: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Fit each detector on ``space["train"]``, threshold on ``space["val"]``, score test and the OOD sets."""
    from nnforge.explain import OODGuard, auroc, build_detector, fpr_at_tpr

    out: dict[str, dict[str, dict[str, float]]] = {o: {} for o in oods}
    specs = detector_specs(order, vocab)
    for name in names:
        registered, params, routes = specs[name]
        det = build_detector(registered, **params)
        names_read = det.input_names
        use_labels = registered in ("mahalanobis", "relative-mahalanobis") and params.get("class_conditional", True)
        det.fit(labels=labels if use_labels else None, **inputs_for(space["train"], routes, names_read))
        guard = OODGuard.calibrate(det, recall=RECALL, **inputs_for(space["val"], routes, names_read))
        id_scores = guard.check(**inputs_for(space["test"], routes, names_read))
        for o in oods:
            ood = guard.check(**inputs_for(space[o], routes, names_read))
            out[o][name] = {"auroc": auroc(id_scores.scores, ood.scores),
                            "fpr95": fpr_at_tpr(id_scores.scores, ood.scores, RECALL),
                            "id_test_recall_at_val_threshold": 1 - float(id_scores.is_ood.double().mean()),
                            "ood_flagged_at_val_threshold": float(ood.is_ood.double().mean())}
    return out


def layer_sweep(space: dict[str, dict[str, torch.Tensor]], ood: str) -> dict[str, list[float]]:
    from nnforge.explain import auroc, build_detector

    res: dict[str, list[float]] = {"mahalanobis-1g": [], "knn": []}
    for k in range(space["train"]["layers"].shape[1]):
        f = {s: space[s]["layers"][:, k] for s in ("train", "test", ood)}
        for key, det in (("mahalanobis-1g", build_detector("mahalanobis", class_conditional=False, normalize=True)),
                         ("knn", build_detector("knn", k=10))):
            det.fit(features=f["train"])
            res[key].append(auroc(det.score(features=f["test"]), det.score(features=f[ood])))
    return res


def supervised_reference(frozen3: dict[str, dict[str, torch.Tensor]], d3: Any) -> dict[str, Any]:
    """Ceiling: a history-vs-rest probe trained WITH history labels on the training plays (not a detector)."""
    from sklearn.linear_model import LogisticRegression

    from nnforge.explain import auroc

    hist = d3.label_names.index("history")
    ytr = np.asarray(d3.splits["train"].labels) == hist
    yte = np.asarray(d3.splits["test"].labels) == hist
    clf = LogisticRegression(C=1.0, max_iter=3000).fit(frozen3["train"]["features"].numpy(), ytr)
    s = torch.from_numpy(clf.decision_function(frozen3["test"]["features"].numpy()))
    return {"what": "logistic regression on frozen MiniLM embeddings trained with history labels on the training "
                    "plays; AUROC of history test plays (richard_ii, henry_v) vs comedy/tragedy test plays",
            "auroc": auroc(s[~torch.from_numpy(yte)], s[torch.from_numpy(yte)])}


def play_novelty_diagnostics(frozen_model: Any, histories: list[str], vocab: int,
                             sizes: tuple[int | None, int, int] = (None, 3000, 500)) -> dict[str, Any]:
    """Why ``histories`` stays near chance, measured (diagnostics, not detectors of the summary).

    - ``genre_transfer``: a TF-IDF logistic regression comedy-vs-tragedy trained on *every* passage of the
      training plays, accuracy on the test plays: does any genre signal carry over to unseen plays?
    - ``supervised_history_vs_rest_tfidf``: the same features trained *with* history labels (a ceiling, not a
      detector), AUROC of the history test plays against the comedy/tragedy test plays.
    - ``same_plays_protocol``: the protocol of the issue's quoted baselines (``anchors/ood.py``): in-distribution
      test = random held-out passages of the comedy and tragedy plays themselves (their plays are seen in
      fitting), not passages of unseen plays; the same history passages as OOD.
    - ``stylometry``: style instead of content — Mahalanobis (one Gaussian) and 10-NN on standardised
      stylometric features (``style_features``) of every training passage; test plays vs histories.

    ``sizes``: passages per play (None: all), passages fitted and ID test passages of ``same_plays_protocol``.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from nnforge.data.shakespeare import genre_dataset
    from nnforge.explain import auroc, build_detector

    cap, n_fit, n_test = sizes
    d2 = genre_dataset(passages_per_play=cap, genres=("comedy", "tragedy"))
    d3 = genre_dataset(passages_per_play=cap)
    out: dict[str, Any] = {}
    tr, te = d2.splits["train"], d2.splits["test"]
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2)
    clf = LogisticRegression(C=3.0, max_iter=3000, class_weight="balanced").fit(vec.fit_transform(tr.texts), tr.labels)
    acc = float((clf.predict(vec.transform(te.texts)) == np.asarray(te.labels)).mean())
    out["genre_transfer"] = {"train_passages": len(tr.texts), "test_passages": len(te.texts), "test_acc": acc,
                             "majority": float(np.bincount(te.labels).max() / len(te.labels))}
    hist = d3.label_names.index("history")
    tr3, te3 = d3.splits["train"], d3.splits["test"]
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2)
    clf = LogisticRegression(C=3.0, max_iter=3000, class_weight="balanced").fit(
        vec.fit_transform(tr3.texts), np.asarray(tr3.labels) == hist)
    s = torch.from_numpy(clf.decision_function(vec.transform(te3.texts)))
    is_hist = torch.from_numpy(np.asarray(te3.labels) == hist)
    out["supervised_history_vs_rest_tfidf"] = {"train_passages": len(tr3.texts), "auroc": auroc(s[~is_hist], s[is_hist])}
    pool = [t for sp in d2.splits.values() for t in sp.texts]
    perm = np.random.default_rng(0).permutation(len(pool))
    texts = {"train": [pool[i] for i in perm[:n_fit]], "test": [pool[i] for i in perm[n_fit : n_fit + n_test]],
             "histories": histories}
    feats = {k: encode(frozen_model, v, layers=()) for k, v in texts.items()}
    res: dict[str, float] = {}
    for n in ORDERS[:3]:
        det = build_detector("token-ngram", order=n, vocab_size=vocab).fit(tokens=feats["train"]["tokens"])
        res[f"token-ngram-{n}"] = auroc(det.score(tokens=feats["test"]["tokens"]), det.score(tokens=feats["histories"]["tokens"]))
    for name, det in (("mahalanobis-1g", build_detector("mahalanobis", class_conditional=False)),
                      ("knn", build_detector("knn", k=10))):
        det.fit(features=feats["train"]["features"])
        res[name] = auroc(det.score(features=feats["test"]["features"]), det.score(features=feats["histories"]["features"]))
    out["same_plays_protocol"] = {"fit_passages": n_fit, "id_test_passages": n_test, "n_ood": len(histories),
                                  "auroc": res}
    # style, not content: densities of stylometric features fitted on every training passage
    style = {k: style_features(v) for k, v in (("train", tr.texts), ("test", te.texts), ("histories", histories))}
    mu, sd = style["train"].mean(0), style["train"].std(0) + 1e-9
    z = {k: torch.from_numpy((v - mu) / sd).float() for k, v in style.items()}
    res = {}
    for name, det in (("mahalanobis-1g", build_detector("mahalanobis", class_conditional=False)),
                      ("knn", build_detector("knn", k=10))):
        det.fit(features=z["train"])
        res[name] = auroc(det.score(features=z["test"]), det.score(features=z["histories"]))
    n_style = style["train"].shape[1] - len(FUNCTION_WORDS)
    out["stylometry"] = {"features": f"{n_style} style features + rates of {len(FUNCTION_WORDS)} function words",
                         "train_passages": len(tr.texts), "test_passages": len(te.texts), "auroc": res}
    return out


FUNCTION_WORDS = ("the and i to of a you my that in is it not me be his with your this he but for have thou so him "
                  "what will by all shall do no we thee our if are her on as thy or at now which would was from they "
                  "more there how then should when than let must may yet o too upon nor here am").split()


def style_features(texts: list[str]) -> np.ndarray:
    """Per passage: word and sentence lengths, syllables per word, punctuation and capitalisation rates,
    type/token ratio, apostrophes, and the rate of each of ``FUNCTION_WORDS`` (what stylometry reads)."""
    import re

    rows = []
    for text in texts:
        words = re.findall(r"[A-Za-z']+", text)
        n = max(len(words), 1)
        lower = [w.lower() for w in words]
        sentences = max(len(re.findall(r"[.?!]+", text)), 1)
        style = [len(words), n / sentences, sum(len(w) for w in words) / n,
                 sum(len(re.findall(r"[aeiouy]+", w)) for w in lower) / n,
                 text.count(",") / n, text.count(".") / n, text.count("?") / n, text.count("!") / n,
                 (text.count(";") + text.count(":")) / n, sum(w[:1].isupper() for w in words[1:]) / n,
                 len(set(lower)) / n, text.count("'") / n]
        rows.append(style + [lower.count(w) / n for w in FUNCTION_WORDS])
    return np.asarray(rows, dtype=np.float64)


# --------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    ap.add_argument("--threads", type=int, help="torch threads (default 2; --smoke: 1, it checks the code, not the "
                                                "speed, and two threads spin against each other on a loaded machine)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads is None:
        args.threads = pick(args, full=2, quick=2, smoke=1)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    from nnforge.models.text import load_minilm

    per_play, n_ood, epochs = pick(args, full=(100, 500, 2), quick=(8, 40, 1), smoke=(1, 6, 1))
    lora_layers = pick(args, full=(3, 4, 5), quick=(3, 4, 5), smoke=(5,))  # smoke: one layer trained, five cached
    data = build_sets(per_play, n_ood)
    oods = data["ood"]
    tasks = {"3-genre": ["stdlib-code", "stdlib-docstrings", "poems"], "2-genre": ["histories"]}
    frozen_model = load_minilm(3)
    vocab = int(frozen_model.tokenizer.vocab_size)
    seconds: dict[str, float] = {}
    results: dict[str, Any] = {"sets": {}, "models": {}, "token_ngram_order": {}}
    # the frozen encoder's view of every passage, computed once (the 2-genre splits are the 3-genre ones
    # without the histories: genre_dataset draws every play's passages with the same seed)
    t0 = time.perf_counter()
    every = sorted({t for task in tasks for sp in data[task].splits.values() for t in sp.texts} |
                   {t for o in oods.values() for t in o})
    row = {t: i for i, t in enumerate(every)}
    encoded = encode(frozen_model, every, layers=tuple(range(frozen_model.num_layers + 1)))
    seconds["frozen_features"] = time.perf_counter() - t0
    log(f"frozen features of {len(every)} distinct passages")
    for task, set_names in tasks.items():
        ds = data[task]
        splits = {s: ds.splits[s] for s in ("train", "val", "test")}
        texts = {**{s: sp.texts for s, sp in splits.items()}, **{o: oods[o] for o in set_names}}
        frozen = {s: {k: v[torch.tensor([row[x] for x in t])] for k, v in encoded.items()} for s, t in texts.items()}
        probe, probe_info = probe_logits(frozen, splits["train"], splits["val"], ds.num_classes)
        for s in frozen:  # the frozen model's logits: the linear probe's
            frozen[s]["logits"] = frozen[s]["features"] @ probe.weight.T + probe.bias
        order, nll = choose_order(frozen["train"]["tokens"], frozen["val"]["tokens"], vocab)
        results["token_ngram_order"][task] = {"chosen": order, "val_nll_per_token": nll}
        labels = torch.tensor(splits["train"].labels)
        frozen_res = evaluate_space(frozen, labels, FROZEN, order, vocab, set_names)
        log(f"{task}: frozen detectors done (token-ngram order {order})")
        t0 = time.perf_counter()
        model, ft_info = fine_tune(splits["train"], splits["val"], ds.num_classes, epochs, log, lora_layers)
        seconds[f"{task}_fine_tune"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        tuned = {s: encode(model, t, layers=()) for s, t in texts.items()}
        seconds[f"{task}_fine_tuned_features"] = time.perf_counter() - t0
        test_labels = torch.tensor(splits["test"].labels)
        ft_info["test_acc"] = float((tuned["test"]["logits"].argmax(-1) == test_labels).float().mean())
        probe_info["test_acc"] = float((frozen["test"]["logits"].argmax(-1) == test_labels).float().mean())
        results["models"][task] = {"labels": ds.label_names, "train": len(splits["train"]), "val": len(splits["val"]),
                                   "test": len(splits["test"]), "frozen_probe": probe_info, "fine_tuned": ft_info}
        tuned_res = evaluate_space(tuned, labels, FINE_TUNED, order, vocab, set_names)
        log(f"{task}: fine-tuned detectors done")
        for o in set_names:
            results["sets"][o] = {"kind": "near" if o in ("histories", "poems") else "far", "model": task,
                                  "n_id_test": len(splits["test"]), "n_ood": len(oods[o]),
                                  "detectors": {"frozen": frozen_res[o], "fine-tuned": tuned_res[o]},
                                  "layer_sweep_auroc": layer_sweep(frozen, o)}
        if task == "3-genre":
            results["reference"] = {"supervised_history_vs_rest": supervised_reference(frozen, ds)}
        if task == "2-genre":
            t0 = time.perf_counter()
            results["histories_diagnostics"] = play_novelty_diagnostics(
                frozen_model, oods["histories"], vocab, pick(args, full=(None, 3000, 500), quick=(300, 600, 100),
                                                             smoke=(2, 12, 6)))
            seconds["histories_diagnostics"] = time.perf_counter() - t0
            log(f"histories diagnostics: {results['histories_diagnostics']}")
        del model, tuned, frozen
    del encoded
    seconds["total"] = time.perf_counter() - t_start
    results["seconds"] = seconds
    results["setup"] = {"passages_per_play": per_play, "n_ood_per_set": n_ood, "ood_pools": data["pools"],
                        "recall": RECALL, "fine_tune_epochs": epochs, "threads": args.threads,
                        "frozen_detectors": FROZEN, "fine_tuned_detectors": FINE_TUNED}
    summary = summarise(results["sets"])
    path = write_results("evaluate", "ood_text", args=args, results=results, summary=summary,
                         packages=("transformers", "peft", "scikit-learn"))
    if path:
        log(f"wrote {path}")
    for part, sets in summary.items():
        for name, row in sets.items():
            print(f"  {part:4s} {name:18s} best {row['best_detector']:32s} AUROC {row['best_auroc']:.3f} "
                  f"FPR95 {row['best_fpr95']:.3f}  MSP {row['msp_auroc']:.3f}")
    return 0


def summarise(sets: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    summary: dict[str, dict[str, dict[str, Any]]] = {"far": {}, "near": {}}
    for name, res in sets.items():
        rows = [(f"{space}/{det}", m) for space, dets in res["detectors"].items() for det, m in dets.items()]
        best_name, best = max(rows, key=lambda r: r[1]["auroc"])
        summary[res["kind"]][name] = {
            "best_detector": best_name, "best_auroc": best["auroc"], "best_fpr95": best["fpr95"],
            "msp_auroc": res["detectors"]["fine-tuned"]["msp"]["auroc"],
            "msp_fpr95": res["detectors"]["fine-tuned"]["msp"]["fpr95"],
            "frozen_probe_msp_auroc": res["detectors"]["frozen"]["msp"]["auroc"]}
    return summary


if __name__ == "__main__":
    sys.exit(main())
