"""The three documents (model card, instructions for use, Annex IV draft), built and written."""


from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from nnforge import runs
from nnforge.govern.documents import _decisions
from nnforge.govern.documents._facts import _Facts, _text_fact
from nnforge.govern.documents._model import DOCUMENTS, Document, Section, Span, render_document
from nnforge.govern.documents._sections import (
    _artifacts,
    _data,
    _environment,
    _explanations,
    _general,
    _intended,
    _logs,
    _metrics_table,
    _ood,
    _risks,
    _slices,
    _suites,
    _training,
)
from nnforge.ledger import Ledger, Verification, atomic_write_text


def _model_card(facts: _Facts, run_id: str, location: str) -> list[Section]:
    s = [Section("Model details")]
    _general(facts, s[0], run_id)
    _decisions.licence(facts, s[0])
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
    _decisions.probe_result(facts, metrics)
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
    _explanations(facts, cav.sub("Explanations"))
    _decisions.guard(facts, cav)
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
    _decisions.oversight(facts, h)
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
    why = two.sub("(b), (d) General logic and training data: what the model relies on (explanations)")
    if not _explanations(facts, why):
        why.todo("explanations of individual outputs and the training examples behind them (nnforge explain RUN "
                 "--index N and nnforge explain data RUN --example N record them in the ledger)")
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
    _decisions.oversight(facts, three.sub("Human oversight measures"))
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
    _decisions.lifecycle(facts, six)
    s.append(six)
    s.append(Section("7. Harmonised standards and other specifications applied").todo(
        "the harmonised standards applied (with references), or the other solutions adopted to meet Chapter III "
        "Section 2"))
    s.append(Section("8. EU declaration of conformity").todo(
        "attach or reference the EU declaration of conformity (Art. 47)"))
    nine = Section("9. Post-market monitoring plan")
    _decisions.post_market(facts, nine)
    s.append(nine)
    return s


_TITLES = {"model-card": "Model card", "instructions-for-use": "Instructions for use (AI Act Art. 13(3))",
           "annex-iv": "Technical documentation draft (AI Act Annex IV)"}
_BUILDERS = {"model-card": _model_card, "instructions-for-use": _instructions, "annex-iv": _annex_iv}


def build_documents(run_dir: str | Path, ledger: Ledger) -> list[Document]:
    """The three documents of the run in ``run_dir``, from its files and its ledger events. A run that did not
    finish, or whose files differ from what the ledger recorded, says so at the top of each document."""
    from nnforge.govern.integrity import check_run

    run_dir = Path(run_dir)
    config = runs.read_config(run_dir)
    sections = runs.read_sections(run_dir)
    run_id = str(config.get("run_id", run_dir.name))
    events = ledger.run_events(run_id)
    verification = ledger.verify()
    head = ledger.head()
    all_events = ledger.store.rows()
    head_seq = max((seq for seq, _, _ in all_events), default=0)
    generated = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    status, state = _decisions.run_state(_Facts(events, config, sections))
    altered = check_run(run_dir, ledger, events=events).altered_files
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
                             secs, [facts.cited[k] for k in sorted(facts.cited)], status=status, state=state,
                             altered=altered))
    return docs




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
