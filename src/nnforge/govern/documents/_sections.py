"""Sections shared by the three documents: who and what, data, metrics, slices, suites, OOD, training, logs."""


from __future__ import annotations

import json
from typing import Any

from nnforge.govern.documents._decisions import intended_users
from nnforge.govern.documents._facts import _Facts, _metadata, _text_fact
from nnforge.govern.documents._model import TODO, Section, Span, _num
from nnforge.ledger import Event
from nnforge.runs import with_runtime_columns


def _general(facts: _Facts, sec: Section, run_id: str) -> None:
    """Provider, model, recipe and run: who and what, from run.started and model.loaded."""
    recipe, rev = facts.recipe()
    meta, _ = _metadata(facts)
    model = facts.first("model.loaded")
    items: list[list[Span | str]] = []
    if meta.get("owner"):
        items.append(["Provider / owner: ", _text_fact(facts, meta["owner"], rev)])
    else:
        items.append(["Provider / owner: ", Span(TODO, todo=True), " — the legal name and address of the provider"])
    if meta.get("contact"):
        items.append(["Contact: ", _text_fact(facts, meta["contact"], rev)])
    else:
        items.append(["Contact: ", Span(TODO, todo=True), " — a contact point for deployers and authorities"])
    items.append(["Run: ", _text_fact(facts, run_id, rev)])
    if recipe.get("name"):
        items.append(["Recipe: ", _text_fact(facts, recipe["name"], rev), " (sha256 ",
                      _text_fact(facts, str(rev.data.get("recipe_sha256", ""))[:16] + "…", rev) if rev else "", ")"])
    if rev is not None:
        items.append(["Started: ", _text_fact(facts, rev.time[:19] + " UTC", rev), " by ", _text_fact(facts, rev.actor, rev)])
        if rev.data.get("git_commit"):
            items.append(["Recipe file at git commit: ", _text_fact(facts, rev.data["git_commit"], rev)])
    if model is not None:
        src = model.data.get("source", {})
        items.append(["Model: ", _text_fact(facts, src.get("name", "?"), model), ", ",
                      facts.cite(model, model.data.get("parameters"), "{:,}"), " parameters, ",
                      facts.cite(model, model.data.get("num_classes"), "{}"), " classes"])
    fin = facts.first("run.finished")
    if fin is not None:
        items.append(["Final state: run finished at ", _text_fact(facts, fin.time[:19] + " UTC", fin)])
    elif (failed := facts.first("run.failed")) is not None:
        items.append(["Final state: run FAILED at ", _text_fact(facts, failed.time[:19] + " UTC", failed), ": ",
                      _text_fact(facts, str(failed.data.get("error", ""))[:200], failed)])
    else:
        items.append(["Final state: not finished (no run.finished event)"])
    sec.bullets(items)
    if recipe.get("description"):
        sec.para("Description: ", _text_fact(facts, recipe["description"], rev))


def _intended(facts: _Facts, sec: Section) -> None:
    meta, rev = _metadata(facts)
    if meta.get("intended_purpose"):
        sec.para("Intended purpose (as declared in the recipe): ", _text_fact(facts, meta["intended_purpose"], rev))
    else:
        sec.todo("the intended purpose: task, users, setting, and the decisions the outputs feed into")
    intended_users(facts, sec)


def _data(facts: _Facts, sec: Section, split_names: tuple[str, ...] | None = None) -> None:
    ev = facts.first("data.loaded")
    if ev is None:
        sec.todo("the data set used, its origin, size and labelling (no data.loaded event in the ledger)")
        return
    labels = ev.data.get("labels", [])
    sec.para("Dataset ", _text_fact(facts, ev.data.get("name", "?"), ev), "; labels: ",
             _text_fact(facts, ", ".join(map(str, labels)), ev), ".")
    src = ev.data.get("source")
    if isinstance(src, dict) and src:
        sec.bullets([[f"{k}: ", _text_fact(facts, json.dumps(v) if not isinstance(v, str) else v, ev)]
                     for k, v in sorted(src.items())])
    rows: list[list[list[Span | str] | Span | str]] = []
    for name, s in ev.data.get("splits", {}).items():
        if split_names is not None and name not in split_names:
            continue
        counts = s.get("class_counts", [])
        rows.append([name, facts.cite(ev, s.get("n"), "{}"),
                     [p for i, c in enumerate(counts) for p in ([" / "] if i else []) + [facts.cite(ev, c, "{}")]],
                     _text_fact(facts, str(s.get("sha256", ""))[:16] + "…", ev)])
    sec.table(["split", "examples", f"per class ({', '.join(map(str, labels))})", "sha256 of texts + labels"], rows)


def _variants(facts: _Facts) -> list[str]:
    variants = list(facts.config.get("variants", {}) or [])
    if not variants:
        found = []
        for e in facts.all("step.finished"):
            for k in e.data.get("metrics", {}):
                if k.endswith("_acc") and not k.startswith(("baseline", "finetune")):
                    found.append(k[: -len("_acc")])
        variants = found
    return with_runtime_columns(variants, {k for e in facts.all("step.finished") for k in e.data.get("metrics", {})})


_METRIC_ROWS = [("accuracy (test)", "acc", "{:.3f}"), ("macro-F1 (test)", "macro_f1", "{:.3f}"),
                ("expected calibration error", "ece", "{:.4f}"),
                ("ECE after temperature scaling", "ece_temperature_scaled", "{:.4f}"),
                ("prediction agreement with fp32", "agreement", "{:.3f}"),
                ("embedding cosine to fp32, min", "cos_min", "{:.4f}"),
                ("batch-1 latency p50 (ms)", "latency_b1_ms", "{:.2f}"),
                ("batch-1 latency p95 (ms)", "latency_b1_p95_ms", "{:.2f}"),
                ("size on disk (MB)", "size_mb", "{:.1f}"), ("memory to serve (MB)", "peak_memory_mb", "{:.1f}")]


def _metrics_table(facts: _Facts, sec: Section) -> bool:
    variants = _variants(facts)
    rows: list[list[list[Span | str] | Span | str]] = []
    for label, key, pat in _METRIC_ROWS:
        cells: list[list[Span | str] | Span | str] = [label]
        any_ = False
        for v in variants:
            s = facts.metric(f"{v}_{key}", pat)
            any_ = any_ or s is not None
            cells.append(s if s is not None else "not measured")
        if any_:
            rows.append(cells)
    base = [("majority class", "baseline_majority_acc"), ("frozen embeddings + logistic regression", "baseline_logreg_acc"),
            ("class-balanced logistic regression", "baseline_logreg_balanced_acc")]
    brow = [[name, s] for name, key in base if (s := facts.metric(key)) is not None]
    sec.table(["figure", *variants], rows)
    for e in facts.all("step.finished"):
        for name, rt in (e.data.get("details") or {}).get("runtimes", {}).items():
            sec.para(f"{name}: the {rt['variant']} variant's weights file executed by nnforge's native runtime "
                     f"({rt['backend']}; activations rounded to int8 per token and block of 64), evaluated as a "
                     f"variant of its own.")
    if brow:
        sec.para("Baselines on the same test split (accuracy):")
        sec.table(["baseline", "accuracy"], brow)  # type: ignore[arg-type]
    return bool(rows)


def _suite_lookup(facts: _Facts, check: str) -> Span | None:
    for e in facts.all("suite.evaluated"):
        for c in e.data.get("checks", []):
            if c.get("check", "").startswith(check + " ") and isinstance(c.get("value"), (int, float)):
                return facts.cite(e, c["value"])
    return None


def _recorded(facts: _Facts, step: Event | None, key: str) -> tuple[Any, bool]:
    """A report section as the evaluate step recorded it in its ledger event (exact citations), else as
    sections.json holds it (cited to that step with a dagger)."""
    stored = ((step.data.get("details") or {}).get(key)) if step is not None else None
    return (stored, False) if stored is not None else (facts.sections.get(key), True)


def _slices(facts: _Facts, sec: Section) -> bool:
    """Per-slice accuracy from sections.json; each value cited to the event that stores it, else (†) to
    the evaluate step that produced it."""
    step = facts.step_event("evaluate")
    sl, derived = _recorded(facts, step, "slices")
    if not isinstance(sl, dict) or not sl.get("rows") or step is None:
        return False
    variants = list(sl.get("variants") or [v for v in _variants(facts) if v in sl["rows"][0]])
    suite_variant = {e.data.get("variant") for e in facts.all("suite.evaluated")}
    rows: list[list[list[Span | str] | Span | str]] = []
    for row in sl["rows"]:
        name = str(row.get("slice"))
        cells: list[list[Span | str] | Span | str] = [name + (" (rare)" if row.get("rare") else ""),
                                                      facts.cite(step, row.get("n"), "{}", derived=derived)]
        for v in variants:
            r = row.get(v, {})
            acc: Span | None = None
            if name == "all":
                acc = facts.metric(f"{v}_acc")
            elif v in suite_variant:
                acc = _suite_lookup(facts, f"slice:{name} accuracy")
            if acc is None or acc.text != _num(r.get("accuracy")):
                acc = facts.cite(step, r.get("accuracy"), derived=derived)
            cells.append([acc, " [", facts.cite(step, r.get("low"), "{:.2f}", derived=derived), ", ",
                          facts.cite(step, r.get("high"), "{:.2f}", derived=derived), "]"])
        rows.append(cells)
    conf = sl.get("confidence", 0.95)
    sec.para(f"Accuracy per slice of the test split with {100 * conf:.0f}% bootstrap intervals "
             f"(slices under {sl.get('rare_below', '?')} examples are marked rare).")
    sec.table(["slice", "n", *[f"{v} accuracy" for v in variants]], rows)
    return True


def _suites(facts: _Facts, sec: Section) -> bool:
    evs = facts.all("suite.evaluated")
    for e in evs:
        sec.para("Regression suite ", _text_fact(facts, e.data.get("suite", "?"), e), " on variant ",
                 _text_fact(facts, e.data.get("variant", "?"), e), ": ",
                 _text_fact(facts, "passed" if e.data.get("passed") else "FAILED", e), ".")
        sec.table(["check", "value", "threshold", "verdict"],
                  [[c.get("check", ""), facts.cite(e, c.get("value"), "{:.4g}"), facts.cite(e, c.get("threshold"), "{:.4g}"),
                    _text_fact(facts, c.get("verdict", ""), e)] for c in e.data.get("checks", [])])
    return bool(evs)


def _ood(facts: _Facts, sec: Section) -> bool:
    step = facts.step_event("evaluate")
    ood, derived = _recorded(facts, step, "ood")
    if not isinstance(ood, dict) or not ood.get("detectors") or step is None:
        return False
    sets = list(ood.get("sets", []))
    rows: list[list[list[Span | str] | Span | str]] = []
    for d in ood["detectors"]:
        rows.append([str(d.get("name")), *[facts.cite(step, d.get(s, {}).get("auroc"), derived=derived) for s in sets],
                     facts.cite(step, d.get("id_accept"), derived=derived)])
    sec.para("Out-of-distribution detection (AUROC of test passages against each out-of-distribution set; "
             "share of in-distribution test inputs accepted):")
    sec.table(["detector", *[f"{s} AUROC" for s in sets], "in-distribution accepted"], rows)
    return True


def _training(facts: _Facts, sec: Section) -> None:
    starts = facts.all("step.started")
    if not starts:
        sec.todo("the training and compression steps (no step events in the ledger)")
        return
    items: list[list[Span | str]] = []
    for e in starts:
        cfg = e.data.get("config", {})
        text = ", ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(cfg.items())) or "no options"
        items.append([f"step {e.data.get('index', '?')} ", _text_fact(facts, e.data.get("step", "?"), e), ": ",
                      _text_fact(facts, text, e)])
    sec.para("Steps as run, each with its full validated configuration:")
    sec.bullets(items)
    fin = facts.step_event("finetune")
    if fin is not None:
        m = fin.data.get("metrics", {})
        parts: list[Span | str] = ["Fine-tuning: "]
        for key, label, pat in (("finetune_steps", "optimizer steps", "{}"), ("finetune_seconds", "seconds", "{:.0f}"),
                                ("finetune_best_val_acc", "best validation accuracy", "{:.3f}"),
                                ("finetune_best_epoch", "at epoch", "{}")):
            if key in m:
                parts += [facts.cite(fin, m[key], pat), f" {label}; "]
        sec.para(*parts)
    q = facts.step_event("quantize")
    if q is not None and q.data.get("metrics"):
        m = q.data["metrics"]
        sec.para("Compression: ", *[p for k, v in sorted(m.items()) for p in (f"{k} ", facts.cite(q, v, "{:.4g}"), "; ")])


def _artifacts(facts: _Facts, sec: Section) -> None:
    rows: list[list[list[Span | str] | Span | str]] = [
        [str(e.data.get("name", "")), str(e.data.get("path", "")), facts.cite(e, e.data.get("bytes"), "{:,}"),
         _text_fact(facts, str(e.data.get("sha256", ""))[:16] + "…", e)] for e in facts.all("artifact.written")]
    sec.table(["artifact", "file", "bytes", "sha256"], rows)


def _environment(facts: _Facts, sec: Section) -> None:
    ev = facts.first("run.started")
    env = ev.data.get("environment") if ev is not None else None
    if not isinstance(env, dict) or ev is None:
        sec.todo("the hardware and software the system was built and tested on")
        return
    keys = ("nnforge", "python", "torch", "platform", "cpu", "cores", "memory_gb", "cuda")
    sec.bullets([[f"{k}: ", _text_fact(facts, env.get(k), ev)] for k in keys if k in env])


def _risks(facts: _Facts, sec: Section) -> None:
    meta, rev = _metadata(facts)
    notes = meta.get("risk_notes") or []
    if notes:
        sec.para("Known limitations and risks declared in the recipe:")
        sec.bullets([[_text_fact(facts, n, rev)] for n in notes])
    else:
        sec.todo("known and foreseeable risks to health, safety and fundamental rights, and the conditions "
                 "under which they arise")


def _logs(facts: _Facts, sec: Section, location: str) -> None:
    sec.para(f"Every step of this run is an event in the hash-chained ledger at {location}. Read them with "
             f"'nnforge ledger show --run {facts.events[0].run if facts.events else 'RUN'}', check the chain with "
             "'nnforge ledger verify --head HEAD' (HEAD as printed at the top of this document), export with "
             "'nnforge ledger export', and trace an artifact with 'nnforge ledger lineage ARTIFACT'.")
    sec.todo("how deployers collect, store and retain the logs produced in operation (Art. 12, Art. 26(6))")


def _explanations(facts: _Facts, sec: Section) -> bool:
    """The explanations computed for this run's model (``model.explained`` events), each cited: what was
    explained, with which method and settings, the answer and what it relied on most."""
    events = facts.all("model.explained")
    if not events:
        return False
    rows: list[list[list[Span | str] | Span | str]] = []
    for e in events[:20]:
        d = e.data
        top = ", ".join(str(u.get("unit")) for u in (d.get("top_positive") or [])[:3])
        err = d.get("completeness_error")
        what = d.get("kind", "feature-attribution")
        rows.append([_text_fact(facts, what, e), _text_fact(facts, d.get("method"), e),
                     _text_fact(facts, (d.get("input") or {}).get("source", d.get("example", "?")), e),
                     _text_fact(facts, d.get("target_label", "?"), e),
                     _text_fact(facts, top or "-", e),
                     facts.cite(e, err, "{:.2%}") if isinstance(err, int | float) else "-"])
    more = f" (the first 20 of {len(events)})" if len(events) > 20 else ""
    sec.para(f"Explanations computed for this model{more}: what it relied on for individual answers "
             "(nnforge explain; settings in each ledger event):")
    sec.table(["kind", "method", "input", "answer", "relied on most", "completeness error"], rows)
    return True

