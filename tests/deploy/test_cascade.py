"""Model cascades: config errors, routing (unsure and OOD inputs go up, caps hold), the threshold rules, and the
remote tiers against local stub servers (an ``nnforge serve``-shaped one and an OpenAI-compatible one)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from tests._servers import running

from nnforge.config import Config
from nnforge.deploy.cascade import (
    ANSWERED,
    Cascade,
    CascadeConfig,
    CascadeResult,
    TierAnswer,
    TierConfig,
    choose_thresholds,
    oracle_answers,
    register_tier,
    simulate,
)
from nnforge.deploy.cascade.tiers.openai import parse_label
from nnforge.errors import ConfigError

LABELS = ["a", "b", "c"]


def _probs(label: int, confidence: float) -> list[float]:
    rest = (1 - confidence) / 2
    return [confidence if j == label else rest for j in range(3)]


def table_model(rows: dict[int, tuple[int, float]]):
    """A 'model' over integer inputs: input i -> (label index, confidence)."""
    return lambda xs: np.array([_probs(*rows[int(x)]) for x in xs])


def three_tiers(small_min=0.8, large_min=0.9, human_cap=0.1, large_cap=None, **extra) -> CascadeConfig:
    return CascadeConfig(tiers=[
        {"name": "small", "kind": "local", "min_confidence": small_min, "options": {"labels": LABELS}},
        {"name": "large", "kind": "local", "min_confidence": large_min, "max_share": large_cap},
        {"name": "human", "kind": "human", "max_share": human_cap, **extra}])


# --- config errors ------------------------------------------------------------------------------------------------


def test_unknown_kind_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"tiers\[1\].*unknown cascade tier kind 'htp' \(did you mean 'http'\?\)"):
        CascadeConfig(tiers=[{"name": "s", "kind": "local"}, {"name": "l", "kind": "htp"}])


@pytest.mark.parametrize(("tiers", "message"), [
    ([{"name": "s", "kind": "local", "min_confidence": 1.5}, {"name": "h", "kind": "human"}],
     r"'tiers\[0\]\.min_confidence' parameter.*less than or equal to 1\. Got 1\.5"),
    ([{"name": "s", "kind": "local"}, {"name": "h", "kind": "human", "max_share": 0}],
     r"'tiers\[1\]\.max_share' parameter.*greater than 0"),
    ([{"name": "s", "kind": "local"}, {"name": "s", "kind": "human"}], r"\['s'\] appear more than once"),
    ([{"name": "s", "kind": "local", "max_share": 0.5}, {"name": "h", "kind": "human"}],
     r"tiers\[0\]\.max_share: the first tier \('s'\) takes every request"),
    ([{"name": "s", "kind": "local"}], r"'tiers' parameter.*at least 2"),
    ([{"name": "s", "kind": "local", "treshold": 0.5}, {"name": "h", "kind": "human"}],
     r"tiers\[0\]\.treshold: unknown field"),
    ([{"name": "s", "kind": "local"}, {"name": "l", "kind": "http", "options": {"url": "ftp://x"}}],
     r"tier 'l' \(kind 'http'\) options: The 'url' parameter of HttpTierOptions"),
    ([{"name": "s", "kind": "local"}, {"name": "l", "kind": "openai", "options": {"base_url": "http://x"}}],
     r"tier 'l' \(kind 'openai'\) options: model: required field is missing; labels: required field"),
    ([{"name": "bad name", "kind": "local"}, {"name": "h", "kind": "human"}], r"'tiers\[0\]\.name' parameter"),
])
def test_config_errors_name_the_field(tiers, message):
    with pytest.raises(ConfigError, match=message):
        CascadeConfig(tiers=tiers)


def test_building_names_the_tier_that_misses_an_object():
    with pytest.raises(ConfigError, match=r"tier 'small' \(kind 'local'\).*predict"):
        Cascade(three_tiers(), objects={"human": {"oracle": list}})
    with pytest.raises(ConfigError, match=r"no tier called \['larg'\]"):
        Cascade(three_tiers(), objects={"larg": {}})
    with pytest.raises(ConfigError, match="either a review queue"):
        Cascade(three_tiers(), objects={"small": {"predict": list}, "large": {"predict": list, "labels": LABELS},
                                        "human": {"oracle": list, "queue": object()}})


def test_config_round_trips_and_with_thresholds_validates():
    from nnforge.config import load_config

    config = three_tiers(large_cap=0.5)
    assert load_config(config.to_dict()) == config
    moved = config.with_thresholds({"small": 0.95})
    assert [t.min_confidence for t in moved.tiers] == [0.95, 0.9, 0.0] and moved.tiers[1].max_share == 0.5
    with pytest.raises(ConfigError, match="no tier called"):
        config.with_thresholds({"tiny": 0.5})
    with pytest.raises(ConfigError, match="less than or equal to 1"):
        config.with_thresholds({"small": 2.0})


# --- routing ------------------------------------------------------------------------------------------------------


def _cascade(config, small, large, *, truth=None, ood=None):
    return Cascade(config, objects={"small": {"predict": table_model(small), "ood": ood},
                                    "large": {"predict": table_model(large), "labels": LABELS},
                                    "human": {"oracle": lambda xs: [LABELS[truth[int(x)]] for x in xs]}})


def test_unsure_and_flagged_inputs_go_up():
    small = {0: (0, 0.95), 1: (1, 0.5), 2: (2, 0.99), 3: (0, 0.6)}
    large = {0: (0, 0.99), 1: (1, 0.97), 2: (1, 0.99), 3: (2, 0.55)}
    truth = {0: 0, 1: 1, 2: 1, 3: 2}
    cascade = _cascade(three_tiers(human_cap=1.0), small, large, truth=truth,
                       ood=lambda xs: np.array([int(x) == 2 for x in xs]))
    result = cascade.run([0, 1, 2, 3], truth=["a", "b", "b", "c"])
    assert [a.tier for a in result.answers] == ["small", "large", "large", "human"]
    assert [a.label for a in result.answers] == ["a", "b", "b", "c"]
    # input 2: the small model was sure (0.99) but flagged it as OOD
    assert [(s.tier, s.status) for s in result.answers[2].path] == [("small", "flagged"), ("large", ANSWERED)]
    assert [s.tier for s in result.answers[3].path] == ["small", "large", "human"]
    assert result.accuracy == 1.0
    reports = {r.name: r for r in result.tiers}
    assert (reports["small"].reached, reports["small"].answered, reports["small"].share) == (4, 1, 0.25)
    assert (reports["large"].reached, reports["large"].answered, reports["large"].reached_share) == (3, 2, 0.75)
    assert reports["small"].statuses == {ANSWERED: 3, "flagged": 1}
    assert reports["human"].answered == 1 and reports["human"].accuracy == 1.0
    for r in reports.values():  # one call each, timed
        assert r.calls == 1 and r.latency_ms > 0 and r.ms_per_input == pytest.approx(r.latency_ms / r.reached)


def test_human_cap_sends_only_the_least_confident_and_the_rest_keep_the_large_answer():
    n = 40
    small = {i: (0, 0.3) for i in range(n)}  # nobody stands at the small tier
    large = {i: (1, 0.5 + i / 100) for i in range(n)}  # all unsure (< 0.9 ... for i < 40)
    truth = {i: 2 for i in range(n)}
    cascade = _cascade(three_tiers(human_cap=0.1), small, large, truth=truth)
    result = cascade.run(list(range(n)))
    human = [i for i, a in enumerate(result.answers) if a.tier == "human"]
    assert human == [0, 1, 2, 3]  # floor(0.1 * 40): the four least confident large answers
    held = [a for a in result.answers if a.held_by == "human"]
    assert len(held) == 36 and all(a.tier == "large" and a.label == "b" for a in held)
    assert result.tier("human").share == 0.1 and result.tier("human").held == 36


def test_caps_count_over_requests_served_one_at_a_time():
    n = 30
    small = {i: (0, 0.3) for i in range(n)}
    large = {i: (1, 0.5) for i in range(n)}
    cascade = _cascade(three_tiers(human_cap=0.1), small, large, truth={i: 2 for i in range(n)})
    results = [cascade.run([i]) for i in range(n)]
    tiers = [r.answers[0].tier for r in results]
    # the allowance grows with the requests seen: the 10th, 20th and 30th request are the first that fit
    assert [i for i, t in enumerate(tiers) if t == "human"] == [9, 19, 29]
    combined = CascadeResult.combine(results)
    assert combined.tier("human").share == 0.1 and combined.tier("small").calls == n
    cascade.reset()
    assert cascade.run([0]).answers[0].tier == "large"


def test_large_cap_holds_inputs_at_the_small_tier():
    n = 10
    small = {i: (0, 0.1 * i) for i in range(n)}  # all unsure
    large = {i: (1, 0.99) for i in range(n)}
    cascade = _cascade(three_tiers(small_min=0.95, large_cap=0.5), small, large, truth={i: 1 for i in range(n)})
    result = cascade.run(list(range(n)), truth=["b"] * n)
    assert [a.tier for a in result.answers] == ["large"] * 5 + ["small"] * 5
    assert result.tier("large").reached_share == 0.5 and result.tier("small").held == 0
    assert result.tier("large").held == 5 and result.accuracy == 0.5


@register_tier("test-broken")
class Broken:
    """A tier kind registered from outside the package (no central edit): it always fails."""

    class Options(Config):
        pass

    @classmethod
    def from_options(cls, options, **objects):
        return cls()

    def answer(self, inputs, previous):
        return [TierAnswer(None, 0.0, "error", detail={"error": "down"}) for _ in previous]


def test_a_failing_tier_passes_its_inputs_up():
    config = CascadeConfig(tiers=[{"name": "small", "kind": "local", "min_confidence": 0.9, "options": {"labels": LABELS}},
                                  {"name": "remote", "kind": "test-broken"},
                                  {"name": "human", "kind": "human"}])
    cascade = Cascade(config, objects={"small": {"predict": table_model({0: (0, 0.5)})},
                                       "human": {"oracle": lambda xs: ["c"] * len(xs)}})
    result = cascade.run([0])
    assert result.answers[0].tier == "human" and result.tier("remote").statuses == {"error": 1}


# --- thresholds ---------------------------------------------------------------------------------------------------


def _validation(n=60, seed=0):
    """Confidence that tracks correctness: the small tier is right when confident, the large one more often."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    small, large = {}, {}
    for i in range(n):
        cs, cl = rng.uniform(0.4, 1.0), rng.uniform(0.5, 1.0)
        small[i] = (int(truth[i]) if cs > 0.7 or rng.random() < 0.5 else (int(truth[i]) + 1) % 3, cs)
        large[i] = (int(truth[i]) if cl > 0.6 or rng.random() < 0.5 else (int(truth[i]) + 2) % 3, cl)
    return small, large, {i: int(t) for i, t in enumerate(truth)}


def _val_answers(config, small, large, truth):
    cascade = _cascade(config, small, large, truth=truth)
    xs = list(range(len(truth)))
    labels = [LABELS[truth[i]] for i in xs]
    return cascade, xs, labels, cascade.answer_all(xs, skip=["human"]) | {"human": oracle_answers(labels)}


def _brute_force(config, answers, labels):
    """Every pair of thresholds among the confidences: (accuracy, reached human, reached large, thresholds)."""
    grid = [sorted({0.0, *(a.confidence for a in answers[name])}) for name in ("small", "large")]
    out = []
    for ts, tl in itertools.product(*grid):
        fig = simulate(config.with_thresholds({"small": ts, "large": tl}), answers, labels)
        out.append((fig["accuracy"], fig["reached_shares"]["human"], fig["reached_shares"]["large"], (ts, tl)))
    return out


def test_most_accurate_rule_is_the_cheapest_of_the_most_accurate():
    small, large, truth = _validation()
    config = three_tiers(large_cap=0.5)
    _, _, labels, answers = _val_answers(config, small, large, truth)
    choice = choose_thresholds(config, answers, labels, grid=1000)
    table = _brute_force(config, answers, labels)
    best = max(acc for acc, *_ in table)
    cheapest = min((h, lg) for acc, h, lg, _ in table if acc == best)
    assert choice.accuracy == best
    assert (choice.reached_shares["human"], choice.reached_shares["large"]) == cheapest
    assert choice.reached_shares["human"] <= 0.1 and choice.reached_shares["large"] <= 0.5
    assert choice.reference == "large" and choice.met_target


def test_cheapest_rule_keeps_the_reference_accuracy_at_least_cost():
    small, large, truth = _validation(seed=1)
    config = three_tiers(large_cap=0.5)
    _, _, labels, answers = _val_answers(config, small, large, truth)
    choice = choose_thresholds(config, answers, labels, rule="cheapest", grid=1000)
    large_alone = np.mean([a.label == t for a, t in zip(answers["large"], labels, strict=True)])
    assert choice.reference_accuracy == pytest.approx(large_alone) and choice.target == choice.reference_accuracy
    table = _brute_force(config, answers, labels)
    feasible = [(h, lg) for acc, h, lg, _ in table if acc >= large_alone]
    assert choice.accuracy >= large_alone
    assert (choice.reached_shares["human"], choice.reached_shares["large"]) == min(feasible)
    # an unreachable bar (a last tier that is no better than the large one): the most accurate come back, marked
    weak = answers | {"human": answers["large"]}
    high = choose_thresholds(config, weak, labels, rule="cheapest", target_accuracy=1.0, grid=1000)
    assert not high.met_target and high.accuracy == max(acc for acc, *_ in _brute_force(config, weak, labels)) < 1


def test_the_cascade_routes_as_the_threshold_search_simulated():
    small, large, truth = _validation(n=80, seed=2)
    config = three_tiers(large_cap=0.5)
    cascade, xs, labels, answers = _val_answers(config, small, large, truth)
    choice = choose_thresholds(config, answers, labels)
    result = _cascade(choice.config, small, large, truth=truth).run(xs, truth=labels)
    assert result.accuracy == pytest.approx(choice.accuracy)
    assert {r.name: r.share for r in result.tiers} == pytest.approx(choice.shares)
    assert {r.name: r.reached_share for r in result.tiers} == pytest.approx(choice.reached_shares)


def test_choose_thresholds_refuses_missing_answers_and_bad_rules():
    small, large, truth = _validation(n=10)
    config = three_tiers()
    _, _, labels, answers = _val_answers(config, small, large, truth)
    with pytest.raises(ConfigError, match=r"no answers for tier\(s\) \['human'\].*oracle_answers"):
        choose_thresholds(config, {k: v for k, v in answers.items() if k != "human"}, labels)
    with pytest.raises(ConfigError, match="'rule' parameter.*'most-accurate', 'cheapest'"):
        choose_thresholds(config, answers, labels, rule="fastest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'tolerance' parameter"):
        choose_thresholds(config, answers, labels, tolerance=-0.1)


# --- remote tiers against local stubs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def serve_stub():
    """An ``nnforge serve``-shaped /predict: label = the input's first value; confidence its second; status
    'flagged' when a third value is given. Records each request's size and Authorization header."""
    from fastapi import Body, FastAPI, Header
    from fastapi.responses import JSONResponse

    app, seen = FastAPI(), []

    @app.post("/predict")
    def predict(body: dict = Body(...), authorization: str | None = Header(None)):  # noqa: B008 - FastAPI's form
        seen.append((len(body["inputs"]), authorization))
        if authorization != "Bearer s3cret":
            return JSONResponse({"detail": "bad token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        preds = [{"label": LABELS[int(x[0])], "confidence": x[1],
                  "probabilities": {lab: (x[1] if j == int(x[0]) else (1 - x[1]) / 2) for j, lab in enumerate(LABELS)},
                  "status": "flagged" if len(x) > 2 else "answered", "id": k}
                 for k, x in enumerate(body["inputs"])]
        return {"predictions": preds}

    with running(app) as url:
        yield url, seen


def _http_cascade(url, monkeypatch, token="s3cret", batch_size=2):
    monkeypatch.setenv("LARGE_TOKEN", token)
    config = CascadeConfig(tiers=[
        {"name": "small", "kind": "local", "min_confidence": 0.9, "options": {"labels": LABELS}},
        {"name": "large", "kind": "http", "min_confidence": 0.8,
         "options": {"url": url, "token_env": "LARGE_TOKEN", "batch_size": batch_size, "timeout_s": 10}},
        {"name": "human", "kind": "human"}])
    return Cascade(config, objects={"small": {"predict": lambda xs: np.array([_probs(0, 0.5) for _ in xs])},
                                    "human": {"oracle": lambda xs: ["c"] * len(xs)}})


def test_http_tier_asks_another_server_with_its_token(serve_stub, monkeypatch):
    url, seen = serve_stub
    seen.clear()
    inputs = np.array([[1, 0.95], [2, 0.85], [0, 0.6], [1, 0.99]])
    with _http_cascade(url, monkeypatch) as cascade:
        result = cascade.run(inputs, truth=["b", "c", "c", "b"])
    assert [a.tier for a in result.answers] == ["large", "large", "human", "large"]
    assert [a.label for a in result.answers] == ["b", "c", "c", "b"]
    assert result.answers[0].detail == {"id": 0}
    assert seen == [(2, "Bearer s3cret"), (2, "Bearer s3cret")]  # batch_size 2: two requests of two
    assert result.tier("large").calls == 1 and result.tier("large").accuracy == 1.0


def test_http_tier_flagged_answers_and_failures_go_up(serve_stub, monkeypatch):
    url, _ = serve_stub
    with _http_cascade(url, monkeypatch) as cascade:
        flagged = cascade.run([[1, 0.99, 1]])
    assert flagged.answers[0].tier == "human" and flagged.answers[0].path[1].status == "flagged"
    with _http_cascade(url, monkeypatch, token="wrong") as cascade:
        refused = cascade.run([[1, 0.99]])
    assert refused.answers[0].tier == "human" and refused.tier("large").statuses == {"error": 1}
    with _http_cascade("http://127.0.0.1:9", monkeypatch) as cascade:  # nothing listens on the discard port
        down = cascade.run([[1, 0.99]])
    assert down.answers[0].tier == "human" and down.tier("large").statuses == {"error": 1}


def test_http_tier_without_its_token_variable_says_so(monkeypatch):
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    config = CascadeConfig(tiers=[{"name": "s", "kind": "local", "options": {"labels": LABELS}},
                                  {"name": "l", "kind": "http", "options": {"url": "http://127.0.0.1:9",
                                                                            "token_env": "NO_SUCH_TOKEN"}}])
    with pytest.raises(ConfigError, match="'NO_SUCH_TOKEN' .*is not set"):
        Cascade(config, objects={"s": {"predict": list}})


@pytest.fixture(scope="module")
def openai_stub():
    """An OpenAI-compatible /v1/chat/completions: answers with the label the user message names after 'say:',
    with logprobs whose sum is log(0.9) (or without logprobs for 'plain')."""
    from fastapi import Body, FastAPI

    app, seen = FastAPI(), []

    @app.post("/v1/chat/completions")
    def chat(body: dict = Body(...)):  # noqa: B008 - FastAPI's form
        seen.append(body)
        said = body["messages"][1]["content"].split("say:")[-1].strip()
        choice = {"index": 0, "message": {"role": "assistant", "content": said}, "finish_reason": "stop"}
        if "plain" not in said:
            choice["logprobs"] = {"content": [{"token": said, "logprob": math.log(0.9)}]}
        return {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [choice]}

    with running(app) as url:
        yield url, seen


def test_openai_tier_prompts_with_the_labels_and_parses_the_reply(openai_stub):
    url, seen = openai_stub
    seen.clear()
    config = CascadeConfig(tiers=[
        {"name": "small", "kind": "local", "min_confidence": 0.99, "options": {"labels": LABELS}},
        {"name": "llm", "kind": "openai", "min_confidence": 0.8,
         "options": {"base_url": url + "/v1", "model": "stub-1", "labels": LABELS, "task": "Name the letter."}},
        {"name": "human", "kind": "human"}])
    cascade = Cascade(config, objects={"small": {"predict": lambda xs: np.array([_probs(0, 0.5) for _ in xs])},
                                       "human": {"oracle": lambda xs: ["a"] * len(xs)}})
    result = cascade.run(["say: b", "say: 'C'.", "say: no idea", "say: plain a", "say: a or b"])
    assert [(a.tier, a.label) for a in result.answers] == [("llm", "b"), ("llm", "c"), ("human", "a"),
                                                           ("llm", "a"), ("human", "a")]
    assert result.answers[0].confidence == pytest.approx(0.9)
    assert result.answers[3].confidence == 1.0 and result.answers[3].detail["confidence"] == "not reported"
    assert result.answers[2].path[1].status == "unparsed"
    system = seen[0]["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("Name the letter.")
    assert "a, b, c" in system["content"] and seen[0]["model"] == "stub-1" and seen[0]["logprobs"] is True


def test_parse_label():
    assert parse_label(" B. ", LABELS) == "b"
    assert parse_label("The answer is c", LABELS) == "c"
    assert parse_label("between a and b", LABELS) is None
    assert parse_label("comedy", ["comedy", "tragedy"]) == "comedy"
    assert parse_label("tragicomedy", ["comedy", "tragedy"]) is None


# --- the human tier's review queue --------------------------------------------------------------------------------


def test_human_tier_queues_for_review_and_answers_pending(tmp_path):
    from nnforge.govern import ReviewQueue

    config = CascadeConfig(tiers=[
        {"name": "small", "kind": "local", "min_confidence": 0.9, "options": {"labels": LABELS}},
        {"name": "human", "kind": "human", "options": {"ledger": str(tmp_path / "ledger.db"), "run": "r1",
                                                       "variant": "int8"}}])
    small = {0: (1, 0.95), 1: (2, 0.6), 2: (0, 0.99)}
    with Cascade(config, objects={"small": {"predict": table_model(small),
                                            "ood": lambda xs: np.array([int(x) == 2 for x in xs])}}) as cascade:
        result = cascade.run([0, 1, 2], truth=["b", "c", "a"])
    assert [a.status for a in result.answers] == [ANSWERED, "pending", "pending"]
    assert result.accuracy == 1.0 and result.tier("human").accuracy is None  # pending answers are not judged
    with ReviewQueue.open(tmp_path / "ledger.db") as q:
        items = q.list()
    assert [(i.run, i.label, i.reason, i.variant, i.input_text) for i in items] == [
        ("r1", "c", "low_confidence", "int8", "1"), ("r1", "a", "ood", "int8", "2")]
    assert [a.detail["review_item"] for a in result.answers[1:]] == [i.id for i in items]


def test_tier_config_validates_alone():
    assert TierConfig(name="x", kind="human").options_config().model_dump() == {"ledger": None, "run": None,
                                                                                 "variant": None}
