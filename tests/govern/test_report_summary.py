"""The run report opens with a one-paragraph summary, shows the confusion matrix the evaluate step recorded, and
says in words when fine-tuning did not beat its linear-probe start (metrics read defensively)."""

from __future__ import annotations

from test_documents_facts import RUN, _build

from nnforge.govern.report import probe_sentence, render_report
from nnforge.ledger import Ledger

CONFUSION = {"fp32": {"labels": ["bug", "billing"], "matrix": [[7, 3], [1, 9]], "support": [10, 10],
                      "per_class_accuracy": {"bug": 0.7, "billing": 0.9}}}


def test_summary_confusion_matrix_and_the_probe_sentence(tmp_path):
    run_dir, db = _build(tmp_path)
    with Ledger.open(db) as led:
        led.append("step.finished", {"step": "evaluate", "index": 1, "metrics": {},
                                     "details": {"confusion": CONFUSION}}, run=RUN)
        html = render_report(run_dir, led)
    summary = html.split('<p id="summary">')[1].split("</p>")[0]
    assert f"Run {RUN} of recipe &#39;tickets&#39; finished." in summary
    assert "Fine-tuning did NOT beat the linear probe its head started from: accuracy gain -0.020" in summary
    assert "(95% interval -0.060 to +0.020)" in summary
    assert html.index('id="summary"') < html.index("<h2>Data</h2>")  # at the top
    assert '<p id="probe" class="bad">Fine-tuning did NOT beat' in html
    matrix = html.split("<h2>Confusion matrix</h2>")[1].split("</table>")[0]
    assert "<th>bug</th><td class=\"num\"><b>7</b></td><td class=\"num\">3</td>" in matrix and "0.900" in matrix


def test_the_summary_states_the_gain_over_logistic_regression_when_recorded():
    from nnforge.govern.report import summary_paragraph

    config = {"run_id": "r", "recipe": {"name": "q"}, "final_variant": "int8", "variants": {"int8": "m"}}
    text = summary_paragraph(config, {"finetune_gain": 0.031, "finetune_gain_ci": [-0.01, 0.07]}, "finished", [], [])
    assert "fine-tuning changes accuracy by +0.031 (95% interval -0.010 to +0.070)" in text
    assert "changes accuracy" not in summary_paragraph(config, {"finetune_gain": "?"}, "finished", [], [])


def test_the_probe_sentence_reads_metrics_defensively():
    assert probe_sentence({}) is None
    assert probe_sentence({"finetune_beats_probe": True, "finetune_probe_gain": 0.05}).startswith(
        "Fine-tuning beat the linear probe its head started from: accuracy gain +0.050")
    odd = probe_sentence({"finetune_beats_probe": False, "finetune_probe_gain": "n/a", "finetune_probe_gain_ci": [1]})
    assert odd is not None and "did NOT beat" in odd and "gain not recorded" in odd


def test_a_failed_run_says_so_in_its_summary(tmp_path):
    run_dir, db = _build(tmp_path, end="KeyboardInterrupt: ")
    with Ledger.open(db) as led:
        html = render_report(run_dir, led)
    assert "interrupted. Its figures are what it recorded before it stopped" in html
    assert "This run was INTERRUPTED" in html
