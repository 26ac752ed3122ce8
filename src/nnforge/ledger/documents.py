"""Generated documentation: a model card, instructions for use (AI Act Art. 13(3)) and an Annex IV
technical documentation draft, rendered from a run's files and its ledger events only.

Every figure carries the ledger event it came from (``0.465 [event #35]``). A figure that the run wrote
to ``sections.json`` (per-slice accuracy, OOD detectors) but that no event stores verbatim is cited with
a dagger (``[event #35†]``): the event of the step that produced it, whose data does not hold the value
itself. What no fact supports is marked ``TO BE COMPLETED BY THE PROVIDER`` with a hint — never invented.
Each document prints the ledger head (hash and sequence number) it was generated from and whether the
chain verified; when it did not, the documents carry a warning at the top.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnforge.errors import ConfigError, IntegrityError, MissingDependencyError
from nnforge.ledger._events import Event, Verification
from nnforge.ledger._ledger import Ledger, atomic_write_text

__all__ = ["TODO", "DOCUMENTS", "FORMATS", "Span", "Block", "Section", "Document", "build_documents",
           "render_document", "write_documents"]

TODO = "TO BE COMPLETED BY THE PROVIDER"
DOCUMENTS = ("model-card", "instructions-for-use", "annex-iv")
FORMATS = ("md", "html")


@dataclass(frozen=True)
class Span:
    """A piece of text; a figure when ``seq`` names the event it came from (``derived``: from a run file
    written by that event's step, not stored in the event itself); a placeholder when ``todo``."""

    text: str
    seq: int | None = None
    hash: str = ""
    derived: bool = False
    todo: bool = False


@dataclass
class Block:
    """A paragraph (``spans``), a bullet list (``items``) or a table (``header`` + ``rows``)."""

    kind: str  # "para" | "list" | "table"
    spans: list[Span] = field(default_factory=list)
    items: list[list[Span]] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[list[Span]]] = field(default_factory=list)


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)

    def para(self, *parts: Span | str) -> Section:
        self.blocks.append(Block("para", spans=[_s(p) for p in parts]))
        return self

    def todo(self, hint: str) -> Section:
        self.blocks.append(Block("para", spans=[Span(TODO, todo=True), Span(f" — {hint}")]))
        return self

    def bullets(self, items: list[list[Span | str]]) -> Section:
        if items:
            self.blocks.append(Block("list", items=[[_s(p) for p in it] for it in items]))
        return self

    def table(self, header: list[str], rows: list[list[list[Span | str] | Span | str]]) -> Section:
        if rows:
            cells = [[[_s(p) for p in c] if isinstance(c, list) else [_s(c)] for c in row] for row in rows]
            self.blocks.append(Block("table", header=header, rows=cells))
        return self

    def sub(self, title: str) -> Section:
        s = Section(title)
        self.subsections.append(s)
        return s

    def is_empty(self) -> bool:
        return not self.blocks and all(s.is_empty() for s in self.subsections)


@dataclass
class Document:
    """One generated document, format-independent."""

    kind: str
    title: str
    run_id: str
    head: str
    head_seq: int
    verification: Verification
    ledger_location: str
    generated: str
    sections: list[Section]
    cited: list[Event]


def _s(p: Span | str) -> Span:
    return p if isinstance(p, Span) else Span(p)


def _num(value: Any, pattern: str = "{:.3f}") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return pattern.format(value)


class _Facts:
    """Finds figures in a run's events and hands them out as cited spans; remembers what was cited."""

    def __init__(self, events: list[Event], config: dict[str, Any], sections: dict[str, Any]) -> None:
        self.events = events
        self.config = config
        self.sections = sections
        self.cited: dict[int, Event] = {}

    def first(self, kind: str, step: str | None = None) -> Event | None:
        for e in self.events:
            if e.kind == kind and (step is None or e.data.get("step") == step):
                return e
        return None

    def all(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def cite(self, event: Event, value: Any, pattern: str = "{:.3f}", derived: bool = False) -> Span:
        self.cited[event.seq] = event
        return Span(_num(value, pattern), seq=event.seq, hash=event.hash, derived=derived)

    def metric(self, key: str, pattern: str = "{:.3f}") -> Span | None:
        """A metric as the step that measured it recorded it (``step.finished``), cited."""
        for e in self.events:
            if e.kind == "step.finished" and key in e.data.get("metrics", {}):
                return self.cite(e, e.data["metrics"][key], pattern)
        return None

    def step_event(self, step: str) -> Event | None:
        return self.first("step.finished", step)

    def recipe(self) -> tuple[dict[str, Any], Event | None]:
        ev = self.first("run.started")
        if ev is not None and isinstance(ev.data.get("recipe"), dict):
            return ev.data["recipe"], ev
        return {}, None


def _text_fact(facts: _Facts, value: Any, event: Event | None) -> Span:
    if event is None:
        return Span(str(value))
    facts.cited[event.seq] = event
    return Span(str(value), seq=event.seq, hash=event.hash)


def _metadata(facts: _Facts) -> tuple[dict[str, Any], Event | None]:
    recipe, ev = facts.recipe()
    meta = recipe.get("metadata") if isinstance(recipe.get("metadata"), dict) else None
    return (meta or {}), ev


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
    sec.bullets(items)
    if recipe.get("description"):
        sec.para("Description: ", _text_fact(facts, recipe["description"], rev))


def _intended(facts: _Facts, sec: Section) -> None:
    meta, rev = _metadata(facts)
    if meta.get("intended_purpose"):
        sec.para("Intended purpose (as declared in the recipe): ", _text_fact(facts, meta["intended_purpose"], rev))
    else:
        sec.todo("the intended purpose: task, users, setting, and the decisions the outputs feed into")
    sec.todo("intended users and out-of-scope uses; the persons or groups the system is used on")


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
    return variants


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


def _model_card(facts: _Facts, run_id: str, location: str) -> list[Section]:
    s = [Section("Model details")]
    _general(facts, s[0], run_id)
    s[0].todo("model version naming, licence, citation, and where to send questions")
    _intended(facts, intended := Section("Intended use"))
    s.append(intended)
    factors = Section("Factors")
    sl = facts.sections.get("slices")
    if isinstance(sl, dict) and sl.get("rows"):
        kinds = sorted({str(r.get("slice", "")).split(":")[0] for r in sl["rows"] if ":" in str(r.get("slice", ""))})
        step = facts.step_event("evaluate")
        factors.para("Evaluated factors (slice kinds): ", _text_fact(facts, ", ".join(kinds) or "none", step), ".")
    factors.todo("relevant demographic, environmental or instrumentation factors not captured by the evaluation slices")
    s.append(factors)
    metrics = Section("Metrics")
    if not _metrics_table(facts, metrics):
        metrics.todo("the performance measures and why they were chosen")
    metrics.todo("why these measures fit the intended use, and decision thresholds if any")
    s.append(metrics)
    ev = Section("Evaluation data")
    _data(facts, ev, ("test", "val"))
    s.append(ev)
    tr = Section("Training data")
    _data(facts, tr, ("train",))
    s.append(tr)
    qa = Section("Quantitative analyses")
    if not _slices(facts, qa):
        qa.todo("disaggregated results per group or slice (no slice evaluation was recorded for this run)")
    _suites(facts, qa)
    s.append(qa)
    eth = Section("Ethical considerations")
    _risks(facts, eth)
    eth.todo("sensitive data used, effects on people, mitigations and remaining harms")
    s.append(eth)
    cav = Section("Caveats and recommendations")
    _ood(facts, cav)
    cav.todo("recommended and discouraged uses, and further testing the provider recommends")
    s.append(cav)
    return s


def _instructions(facts: _Facts, run_id: str, location: str) -> list[Section]:
    s = []
    a = Section("(a) Provider")
    _general(facts, a, run_id)
    s.append(a)
    b = Section("(b)(i) Intended purpose")
    _intended(facts, b)
    s.append(b)
    acc = Section("(b)(ii) Declared accuracy and robustness metrics (Art. 15)")
    if not _metrics_table(facts, acc):
        acc.todo("the levels of accuracy, robustness and cybersecurity tested and expected")
    _suites(facts, acc)
    _ood(facts, acc)
    acc.todo("the expected level of accuracy in operation and circumstances that may change it; cybersecurity measures")
    s.append(acc)
    r = Section("(b)(iii) Known and foreseeable risks")
    _risks(facts, r)
    s.append(r)
    g = Section("(b)(v) Performance for specific persons or groups (per slice)")
    if not _slices(facts, g):
        g.todo("performance for the persons or groups the system is intended to be used on")
    s.append(g)
    i = Section("(b)(vi) Input data specifications")
    ev = facts.first("data.loaded")
    if ev is not None:
        i.para("The model was built for inputs like those of dataset ", _text_fact(facts, ev.data.get("name", "?"), ev),
               " with labels ", _text_fact(facts, ", ".join(map(str, ev.data.get("labels", []))), ev), ".")
    i.todo("the format, language, length and quality the inputs must have, and inputs that must not be given")
    s.append(i)
    o = Section("(b)(vii) How to read the outputs")
    o.para("Each prediction is a label with a confidence (the softmax probability of that label); "
           "'nnforge predict RUN --json' prints both. Calibration of these confidences is reported under (b)(ii).")
    o.todo("how deployers should interpret outputs in context and which confidence warrants action")
    s.append(o)
    c = Section("(c) Pre-determined changes")
    c.todo("changes to the system and its performance pre-determined by the provider at the initial assessment")
    s.append(c)
    h = Section("(d) Human oversight measures (Art. 14)")
    guard = [e for e in facts.all("artifact.written") if str(e.data.get("name", "")).startswith("ood-guard")]
    if guard:
        h.para("An out-of-distribution guard was written with the run (", _text_fact(facts, guard[0].data.get("path"), guard[0]),
               "); it can route unfamiliar inputs to a person instead of answering.")
    h.todo("who oversees the system, their competence and authority, and how they can override or stop it")
    s.append(h)
    e = Section("(e) Computational resources, expected lifetime and maintenance")
    _environment(facts, e)
    final = str(facts.config.get("final_variant", ""))
    size = facts.metric(f"{final}_size_mb", "{:.1f}") if final else None
    memory = facts.metric(f"{final}_peak_memory_mb", "{:.1f}") if final else None
    if size is not None:
        parts: list[Span | str] = [f"The final variant ({final}) takes ", size, " MB on disk"]
        if memory is not None:
            parts += [" and ", memory, " MB of memory to serve"]
        e.para(*parts, ".")
    e.todo("the expected lifetime of the system and the maintenance and care measures, including software updates")
    s.append(e)
    lg = Section("(f) Collecting, storing and reading the logs")
    _logs(facts, lg, location)
    s.append(lg)
    return s


def _annex_iv(facts: _Facts, run_id: str, location: str) -> list[Section]:
    s = []
    one = Section("1. General description of the AI system")
    _general(facts, one, run_id)
    _intended(facts, one)
    _environment(facts, one.sub("Hardware and software the system was built and tested on"))
    one.todo("how the system interacts with other hardware or software, versions of relevant software, "
             "the forms in which it is placed on the market, and a description of the user interface")
    s.append(one)
    two = Section("2. Elements of the AI system and its development process")
    d = two.sub("Design choices")
    recipe, rev = facts.recipe()
    if recipe.get("model"):
        d.para("Model source as declared in the recipe: ",
               _text_fact(facts, json.dumps(recipe["model"], sort_keys=True), rev), ".")
    d.todo("the rationale and assumptions behind the design choices, trade-offs, and what the system is optimised for")
    dg = two.sub("Data and data governance")
    _data(facts, dg)
    dg.todo("data provenance, collection and labelling procedures, cleaning, and the examination for possible biases (Art. 10)")
    tm = two.sub("Training methods and techniques")
    _training(facts, tm)
    _artifacts(facts, two.sub("Artifacts produced (by sha256)"))
    two.sub("Validation and testing procedures").para(
        "See section 4 for the metrics and the regression suite that gated this run.")
    s.append(two)
    three = Section("3. Monitoring, functioning and control")
    _risks(facts, three)
    _ood(facts, three)
    three.sub("Human oversight measures").todo("the human oversight measures of Art. 14 and the technical measures "
                                               "that help deployers interpret outputs")
    _logs(facts, three.sub("Logging"), location)
    s.append(three)
    four = Section("4. Performance metrics and their appropriateness")
    if not _metrics_table(facts, four):
        four.todo("the performance metrics")
    _slices(facts, four.sub("Per slice"))
    _suites(facts, four.sub("Acceptance checks"))
    four.todo("why these metrics are appropriate for the intended purpose")
    s.append(four)
    s.append(Section("5. Risk management system (Art. 9)").todo(
        "the risk management system: identified risks, estimation, evaluation and the measures adopted; link the "
        "risk register here"))
    six = Section("6. Changes through the lifecycle")
    others = facts.events[0].data.get("recipe_modified_since_commit") if facts.events else None
    if others is not None and facts.events:
        six.para("Recipe file modified since its git commit at run start: ",
                 _text_fact(facts, "yes" if others else "no", facts.events[0]), ".")
    six.todo("relevant changes made by the provider to the system through its lifecycle (earlier runs, retraining, "
             "promotions)")
    s.append(six)
    s.append(Section("7. Harmonised standards and other specifications applied").todo(
        "the harmonised standards applied (with references), or the other solutions adopted to meet Chapter III "
        "Section 2"))
    s.append(Section("8. EU declaration of conformity").todo(
        "attach or reference the EU declaration of conformity (Art. 47)"))
    s.append(Section("9. Post-market monitoring plan").todo(
        "the post-market monitoring plan (Art. 72): what is monitored in operation (e.g. ledger events, OOD-guard "
        "rejection rate, review-queue outcomes), how often, by whom, and the thresholds that trigger action"))
    return s


_TITLES = {"model-card": "Model card", "instructions-for-use": "Instructions for use (AI Act Art. 13(3))",
           "annex-iv": "Technical documentation draft (AI Act Annex IV)"}
_BUILDERS = {"model-card": _model_card, "instructions-for-use": _instructions, "annex-iv": _annex_iv}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{path}: not valid JSON ({exc})") from None
    return doc if isinstance(doc, dict) else {}


def build_documents(run_dir: str | Path, ledger: Ledger) -> list[Document]:
    """The three documents of the run in ``run_dir``, from its files and its ledger events."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.json)")
    config = _read_json(run_dir / "config.json")
    sections = _read_json(run_dir / "sections.json")
    run_id = str(config.get("run_id", run_dir.name))
    events = ledger.events(run=run_id)
    if not events:
        raise ConfigError(f"run {run_id}: the ledger at {ledger.location} holds no events of it; pass the "
                          "ledger the run wrote to (--ledger)")
    verification = ledger.verify()
    head = ledger.head()
    all_events = ledger.store.rows()
    head_seq = max((seq for seq, _, _ in all_events), default=0)
    generated = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    docs = []
    for kind in DOCUMENTS:
        facts = _Facts(events, config, sections)
        secs = _BUILDERS[kind](facts, run_id, ledger.location)
        for sec in secs:  # never an empty section: say what is missing instead
            if sec.is_empty():
                sec.todo("no facts in the ledger cover this section")
            for sub in sec.subsections:
                if sub.is_empty():
                    sub.todo("no facts in the ledger cover this section")
        docs.append(Document(kind, _TITLES[kind], run_id, head, head_seq, verification, ledger.location, generated,
                             secs, [facts.cited[k] for k in sorted(facts.cited)]))
    return docs


def _md_escape(text: Any) -> str:
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
            .replace("\n", " "))


def render_document(doc: Document, fmt: str) -> str:
    """``doc`` as Markdown (``md``) or self-contained HTML (``html``); HTML autoescapes every value."""
    if fmt not in FORMATS:
        raise ConfigError(f"document format {fmt!r}: expected one of {', '.join(FORMATS)}")
    try:
        import jinja2
    except ImportError as exc:
        raise MissingDependencyError("documents need jinja2: pip install 'nnforge[report]'") from exc
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=fmt == "html", undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["mdx"] = _md_escape
    return env.get_template(f"document.{fmt}.j2").render(doc=doc, todo=TODO)


def write_documents(run_dir: str | Path, ledger: Ledger, fmt: str = "md",
                    out_dir: str | Path | None = None) -> tuple[list[Path], Verification]:
    """Render and atomically write the three documents (default: ``RUN/docs/``); returns the paths and the
    chain verification (documents are written even when it failed, with a warning at their top)."""
    docs = build_documents(run_dir, ledger)
    target = Path(out_dir) if out_dir is not None else Path(run_dir) / "docs"
    paths = []
    for doc in docs:
        path = target / f"{doc.kind}.{fmt}"
        atomic_write_text(path, render_document(doc, fmt))
        paths.append(path)
    return paths, docs[0].verification
