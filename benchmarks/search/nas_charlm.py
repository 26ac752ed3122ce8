"""Benchmark: architecture search for the char-GPT on shakespeare-char against nanoGPT's CPU config.

    python benchmarks/search/nas_charlm.py            # full: 3 samplers x 3 seeds x 10 min studies (about 2 h)
    python benchmarks/search/nas_charlm.py --quick    # one seed each, seconds per study (a few minutes)
    python benchmarks/search/nas_charlm.py --smoke    # tiny models and steps; writes nothing

What it does, in order (every setting below is fixed before any measurement):

1. **Latency predictor.** Random distinct architectures of the ``char-gpt`` space are timed (batch-1 p50 on
   one 64-token context, one thread, interleaved 20 at a time); the predictor (FLOPs, module calls,
   parameters) is fitted on the first half and its median relative absolute error reported on the other half
   (40 held out in full). Every batch-1 latency here is timed on one thread (``LATENCY_THREADS``).
2. **Baseline.** nanoGPT's CPU config (4 layers, 4 heads, 128 wide, MLP ratio 4) is trained for the trial
   length and measured. The hypervolume's reference point is 1.1x its (val loss, latency).
3. **Studies.** Random search, TPE and regularized evolution, 3 seeds each, each study 10 minutes of wall
   clock (``timeout_s``), training on 2 threads, objectives (val loss after the trial's steps, batch-1
   latency), constraint ``latency_b1_ms <= 1.1 x baseline`` (the reference point: a slower model adds no hypervolume). Every
   trial is screened first: predicted over the limit, it is not built or trained and is recorded as
   infeasible (val loss = ln(vocabulary), a uniform guess; ``screened``); measured over the limit, it is
   not trained either. Trials are pruned by dominance: at each evaluation, a trial stops when an earlier
   complete trial of the same study that is at least as fast had a val loss lower by more than
   ``PRUNE_MARGIN`` at the same step (all trials share one schedule, so equal steps are comparable; pruning on
   val loss alone would stop small fast models that lie on the Pareto front). Hypervolume of each study's
   feasible complete trials against the reference point; mean over seeds.
4. **Confirmation.** The winner is the feasible complete trial (any study) dominating the baseline with the
   largest dominated box ``(base_loss - loss) x (base_latency - latency)``; it and the baseline are re-trained
   at the full 2,000 steps (seed 0, 200 validation batches, the training issue's setup) and their batch-1
   latencies measured interleaved, as a ratio with a 95% interval. ``dominates_baseline``: lower val loss
   and a latency ratio whose whole interval is below 1.

Training as in ``benchmarks/optim/charlm.py``: batch 12, context 64, AdamW lr 8e-3 (its best lr there), betas
(0.9, 0.99), weight decay 0.1, warm-up then cosine to 10%, clip 1.0.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, pick, ratio_with_ci, spread, write_results  # noqa: E402

SAMPLERS = ("random", "tpe", "evolution")
SAMPLER_OPTIONS: dict[str, dict[str, Any]] = {"evolution": {"population_size": 10, "sample_size": 3}}
PRUNE_MARGIN = 0.02  # val loss: how much better a faster trial must have been at the same step to stop this one
REF_FACTOR = 1.1  # the hypervolume's reference point, x the baseline's values (the figure)
LR, BATCH = 8e-3, 12
# batch-1 latency = fixed cost per module call (Python, dispatch) + arithmetic + reading the weights
PREDICTOR_FEATURES = ("flops", "module_calls", "params")
# batch-1 inference on one thread: the usual CPU serving setup, and OpenMP's barriers make multi-threaded
# timings of small matmuls on a shared 2-core machine both noisy and far from linear in the FLOPs
LATENCY_THREADS = 1
GROUP = 20  # architectures timed interleaved at once for the predictor (their weights fit in memory together)

# --- settings -----------------------------------------------------------------------------------------------


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Everything a mode changes."""
    return {
        "block_size": pick(args, full=64, quick=64, smoke=16),
        "trial_steps": pick(args, full=400, quick=40, smoke=2),
        "eval_every": pick(args, full=100, quick=20, smoke=1),
        "trial_val_batches": pick(args, full=50, quick=4, smoke=1),
        "full_steps": pick(args, full=2000, quick=80, smoke=3),
        "full_val_batches": pick(args, full=200, quick=8, smoke=1),
        "study_s": pick(args, full=600.0, quick=10.0, smoke=None),
        # the study's trial tickets (created up front): more than fit in its wall clock, which ends it
        "study_trials": pick(args, full=400, quick=40, smoke=2),
        "seeds": pick(args, full=[0, 1, 2], quick=[0], smoke=[0]),
        "predictor_fit": pick(args, full=40, quick=10, smoke=4),
        "predictor_held_out": pick(args, full=40, quick=10, smoke=4),
        "repeats": pick(args, full=30, quick=10, smoke=3),
        "latency_rounds": pick(args, full=60, quick=15, smoke=3),
        "threads": pick(args, full=2, quick=1, smoke=1),  # 1 on a loaded machine: OpenMP barriers stall
        # smoke: only small candidates, so that seconds suffice
        "space_limits": pick(args, full=None, quick=None, smoke={"n_layer": 2, "n_embd": 64}),
    }


# --- measuring and training ---------------------------------------------------------------------------------


@contextlib.contextmanager
def latency_threads() -> Iterator[None]:
    """Batch-1 latency is timed on ``LATENCY_THREADS`` threads (training uses the mode's ``threads``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(LATENCY_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def latency_ms(model: torch.nn.Module, block: int, repeats: int) -> float:
    """Batch-1 p50 latency on one full context (``hardware.measure_model``, under inference mode)."""
    from nnforge.hardware import measure_model

    with torch.inference_mode(), latency_threads():
        return float(measure_model(model, torch.zeros(1, block, dtype=torch.long), repeats=repeats)["latency_b1_ms"])


def val_batches(corpus: Any, n: int, block: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(12345)
    return [corpus.batch("val", BATCH, block, gen) for _ in range(n)]


def train(model: torch.nn.Module, corpus: Any, steps: int, eval_every: int, val: list[Any], block: int,
          callbacks: Sequence[Any] = ()) -> dict[int, float]:
    """Train from the model's initial weights (seed 0 data order); returns the val loss at each evaluation."""
    from nnforge.train import TrainConfig, fit

    config = TrainConfig(max_steps=steps, lr=LR, schedule="cosine", warmup_steps=min(100, steps // 10),
                         min_lr_ratio=0.1, clip_norm=1.0, eval_every=eval_every, log_every=10_000, seed=0)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return corpus.batch("train", BATCH, block, torch.Generator().manual_seed(1_000_003 + step))

    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.99), weight_decay=0.1)
    result = fit(model, batch, config=config, optimizer=optimizer, eval_data=val,
                 loss_fn=lambda m, b: m(b[0], b[1])[1], callbacks=list(callbacks))
    return {int(e["step"]): float(e["loss"]) for e in result.evals}


def build(params: dict[str, Any], block: int, vocab: int, seed: int = 0) -> torch.nn.Module:
    from nnforge.search.nas import SPACES

    torch.manual_seed(seed)
    return SPACES.get("char-gpt").build(params, block_size=block, vocab_size=vocab)


# --- the latency predictor ----------------------------------------------------------------------------------


def architectures(space: Any, n: int, seed: int, limits: dict[str, int] | None) -> list[dict[str, Any]]:
    """``n`` distinct random architectures of the space (within ``limits``: option -> largest value)."""
    rng, out = random.Random(seed), []
    for _ in range(100 * n):
        p = {}
        for k, v in space.params.items():
            values = v.choices if v.kind == "categorical" else list(range(int(v.low), int(v.high) + 1))
            p[k] = rng.choice([x for x in values if limits is None or k not in limits or x <= limits[k]])
        if p not in out:
            out.append(p)
        if len(out) == n:
            break
    return out


def predictor_study(s: dict[str, Any], vocab: int) -> tuple[Any, dict[str, Any]]:
    """Measure random architectures, fit on the first part, report the error on the held-out rest.

    The architectures are timed interleaved, ``GROUP`` at a time (round by round in shuffled order, the p50 of
    each), so machine noise spreads evenly over them; the predictor uses ``PREDICTOR_FEATURES``.
    """
    from nnforge.hardware import interleave
    from nnforge.search.nas import SPACES
    from nnforge.search.predictor import architecture_features, fit_latency_predictor

    space, block = SPACES.get("char-gpt"), s["block_size"]
    archs = architectures(space, s["predictor_fit"] + s["predictor_held_out"], 7, s["space_limits"])
    feats = [architecture_features(space, p, block_size=block, vocab_size=vocab) for p in archs]
    x = torch.zeros(1, block, dtype=torch.long)
    lats: list[float] = []
    for start in range(0, len(archs), GROUP):
        models = {str(i): build(p, block, vocab).eval() for i, p in enumerate(archs[start:start + GROUP])}
        with latency_threads():
            times = interleave({k: (lambda m=m: m(x)) for k, m in models.items()}, rounds=s["latency_rounds"],
                               warmup=3)
        lats += [spread(times[str(i)])["median"] for i in range(len(models))]
    k = s["predictor_fit"]
    predictor = fit_latency_predictor(feats[:k], lats[:k], names=PREDICTOR_FEATURES)
    err = predictor.median_relative_error(feats[k:], lats[k:])
    rel = [abs(predictor.predict(f) - y) / y for f, y in zip(feats[k:], lats[k:], strict=True)]
    print(f"latency predictor: fitted on {k}, median relative error {err:.3f} on {len(rel)} held out", flush=True)
    return predictor, {"fitted_on": k, "held_out": len(rel), "median_relative_abs_error": err,
                       "relative_abs_errors": spread(rel), "features": list(PREDICTOR_FEATURES),
                       "timed_interleaved_in_groups_of": GROUP, "predictor": predictor.to_dict(),
                       "architectures": [{"params": p, "latency_b1_ms": y, "held_out": i >= k}
                                         for i, (p, y) in enumerate(zip(archs, lats, strict=True))]}


# --- one study ----------------------------------------------------------------------------------------------

STATE: dict[str, Any] = {}  # what the trial function reads (the search runs it in this process: workers=1)


def dominance_pruner(latency: float, curves: list[tuple[float, dict[int, float]]]) -> Any:
    """A training callback that stops the trial when an earlier, at-least-as-fast trial was clearly better."""
    from nnforge.train import Event

    def callback(event: Any, state: Any) -> None:
        if event is not Event.EVAL_END:
            return
        loss = float(state.metrics["loss"])
        if any(lat <= latency and curve.get(state.step, math.inf) < loss - PRUNE_MARGIN for lat, curve in curves):
            state.stop_training = True
            state.stop_reason = f"dominated at step {state.step}"
            STATE["pruned"] = True

    return callback


def nas_trial(ctx: Any) -> dict[str, float]:
    """Measure, then train short with dominance pruning; (val loss, latency). Runs behind the predictor's screen."""
    from nnforge.search._optuna import optuna

    s, vocab, limit = STATE["settings"], STATE["vocab"], STATE["limit_ms"]
    block = s["block_size"]
    model = build(ctx.params, block, vocab)
    latency = latency_ms(model, block, s["repeats"])
    if latency > limit:
        ctx.set_attr("screened", "measured over the latency limit: not trained")
        return {"val_loss": math.log(vocab), "latency_b1_ms": latency}
    STATE["pruned"] = False
    curve = train(model, STATE["corpus"], s["trial_steps"], s["eval_every"], STATE["val"], block,
                  [dominance_pruner(latency, STATE["curves"])])
    ctx.set_attr("val_curve", {str(k): v for k, v in curve.items()})
    if STATE["pruned"]:
        raise optuna().TrialPruned(f"dominated at step {max(curve)}")
    STATE["curves"].append((latency, curve))
    return {"val_loss": curve[max(curve)], "latency_b1_ms": latency}


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both minimised) inside the box below ``ref``."""
    inside = sorted(p for p in points if p[0] < ref[0] and p[1] < ref[1])
    area, best_latency = 0.0, ref[1]
    for loss, latency in inside:  # by increasing loss: each point adds the strip its latency improves on
        if latency < best_latency:
            area += (ref[0] - loss) * (best_latency - latency)
            best_latency = latency
    return area


def run_study(sampler: str, seed: int, s: dict[str, Any], folder: Path) -> dict[str, Any]:
    from nnforge.search import Objective, SearchConfig, search
    from nnforge.search.predictor import ScreenedTrial

    STATE["curves"] = []
    vocab = STATE["vocab"]
    # a candidate predicted over the limit is not built or trained; its val loss is a uniform guess's, ln(vocab)
    trial = ScreenedTrial(nas_trial, STATE["predictor"], STATE["space"], STATE["limit_ms"],
                          skipped={"val_loss": math.log(vocab)}, fixed={"block_size": s["block_size"],
                                                                         "vocab_size": vocab})
    config = SearchConfig(space=STATE["space"].space(), objectives=[Objective(metric="val_loss"),
                                                                    Objective(metric="latency_b1_ms")],
                          constraints=[f"latency_b1_ms <= {STATE['limit_ms']:.6g}"], sampler=sampler,
                          sampler_options=SAMPLER_OPTIONS.get(sampler, {}), trials=s["study_trials"],
                          timeout_s=s["study_s"], seed=seed, study_name=f"nas-{sampler}-{seed}")
    t0 = time.perf_counter()
    result = search(trial, config, storage=folder / f"{sampler}-{seed}.journal")
    wall = time.perf_counter() - t0
    trials = [t.to_dict() for t in result.trials if t.state not in ("waiting", "running")]  # unused tickets
    points = [(t.metrics["val_loss"], t.metrics["latency_b1_ms"]) for t in result.trials
              if t.state == "complete" and t.feasible]
    hv = hypervolume(points, STATE["ref"])
    counts = {state: result.count(state) for state in ("complete", "pruned", "failed")}
    screened = sum("screened" in t.attrs for t in result.trials)
    print(f"{sampler:9s} seed {seed}: {len(trials)} trials ({counts}, {screened} screened) in {wall:.0f} s, "
          f"hypervolume {hv:.4g}", flush=True)
    return {"sampler": sampler, "seed": seed, "wall_s": wall, "hypervolume": hv, "counts": counts,
            "screened": screened, "trials": trials}


# --- the confirmation ---------------------------------------------------------------------------------------


def pick_winner(studies: list[dict[str, Any]], base: tuple[float, float]) -> dict[str, Any] | None:
    """The feasible complete trial dominating the baseline with the largest dominated box."""
    best, best_box = None, 0.0
    for study in studies:
        for t in study["trials"]:
            if t["state"] != "complete" or not t["feasible"]:
                continue
            loss, lat = t["metrics"]["val_loss"], t["metrics"]["latency_b1_ms"]
            box = (base[0] - loss) * (base[1] - lat)
            if loss < base[0] and lat < base[1] and box > best_box:
                best, best_box = {**t, "sampler": study["sampler"], "seed": study["seed"], "box": box}, box
    return best


def confirm(winner: dict[str, Any] | None, baseline: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    """Re-train baseline and winner at full steps; interleaved batch-1 latency ratio winner / baseline."""
    from nnforge.hardware import interleave

    block, vocab, corpus = s["block_size"], STATE["vocab"], STATE["corpus"]
    val = val_batches(corpus, s["full_val_batches"], block)
    models, losses = {}, {}
    for name, params in (("baseline", baseline), ("winner", winner["params"] if winner else None)):
        if params is None:
            continue
        models[name] = build(params, block, vocab)
        curve = train(models[name], corpus, s["full_steps"], max(1, s["full_steps"] // 20), val, block)
        losses[name] = curve[max(curve)]
        print(f"{name} at {s['full_steps']} steps: val loss {losses[name]:.4f}", flush=True)
    x = torch.zeros(1, block, dtype=torch.long)
    with latency_threads():
        times = interleave({n: (lambda m=m: m(x)) for n, m in models.items()}, rounds=s["latency_rounds"], warmup=3)
    out: dict[str, Any] = {"steps": s["full_steps"], "val_batches": s["full_val_batches"], "val_loss": losses,
                           "latency_b1_ms": {n: spread(t) for n, t in times.items()}}
    if "winner" in models:
        ratio, ci = ratio_with_ci(times["winner"], times["baseline"])
        out.update(latency_ratio=ratio, latency_ratio_ci=list(ci),
                   dominates=bool(losses["winner"] < losses["baseline"] and ci[1] < 1.0))
    return out


# --- main ---------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    s = settings(args)
    torch.set_num_threads(s["threads"])
    import optuna

    from nnforge.data import load
    from nnforge.search.nas import SPACES

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    corpus = load("shakespeare-char")
    block, vocab = s["block_size"], corpus.vocab_size
    space = SPACES.get("char-gpt")
    if s["space_limits"]:
        from nnforge.search.nas import ArchitectureSpace

        limits = s["space_limits"]
        space = ArchitectureSpace(name=space.name, architecture=space.architecture, example_input=space.example_input,
                                  params={k: _limited(p, limits.get(k)) for k, p in space.params.items()})
    predictor, predictor_doc = predictor_study(s, vocab)
    val = val_batches(corpus, s["trial_val_batches"], block)
    baseline = dict(SPACES.get("char-gpt").baseline)
    base_curve = train(build(baseline, block, vocab), corpus, s["trial_steps"], s["eval_every"], val, block)
    base = (base_curve[max(base_curve)], latency_ms(build(baseline, block, vocab), block, s["repeats"]))
    print(f"baseline at {s['trial_steps']} steps: val loss {base[0]:.4f}, batch-1 latency {base[1]:.3f} ms", flush=True)
    STATE.update(settings=s, vocab=vocab, corpus=corpus, val=val, space=space, predictor=predictor,
                 ref=(REF_FACTOR * base[0], REF_FACTOR * base[1]), limit_ms=REF_FACTOR * base[1])
    with tempfile.TemporaryDirectory(prefix="nas-charlm-") as tmp:
        studies = [run_study(sampler, seed, s, Path(tmp)) for seed in s["seeds"] for sampler in SAMPLERS]
    hv = {name: sum(x["hypervolume"] for x in studies if x["sampler"] == name) / len(s["seeds"]) for name in SAMPLERS}
    winner = pick_winner(studies, base)
    confirmation = confirm(winner, baseline, s)
    summary = {
        "baseline_val_loss": confirmation["val_loss"]["baseline"],
        "baseline_latency_ms": confirmation["latency_b1_ms"]["baseline"]["median"],
        "best_val_loss": confirmation["val_loss"].get("winner"),
        "best_latency_ms": confirmation["latency_b1_ms"]["winner"]["median"] if winner else None,
        "dominates_baseline": bool(confirmation.get("dominates", False)),
        "latency_ratio": confirmation.get("latency_ratio"), "latency_ratio_ci": confirmation.get("latency_ratio_ci"),
        "hypervolume_random": hv["random"], "hypervolume_tpe": hv["tpe"], "hypervolume_evolution": hv["evolution"],
        "predictor_median_abs_err": predictor_doc["median_relative_abs_error"],
        "predictor_held_out": predictor_doc["held_out"],
    }
    if winner is None:
        del summary["latency_ratio"], summary["latency_ratio_ci"]
    setup = {**{k: v for k, v in s.items()}, "samplers": list(SAMPLERS), "sampler_options": SAMPLER_OPTIONS,
             "prune_margin": PRUNE_MARGIN, "reference_factor": REF_FACTOR, "lr": LR, "batch": BATCH,
             "optimizer": "AdamW betas (0.9, 0.99), weight decay 0.1, warm-up + cosine to 10%, clip 1.0",
             "baseline_params": baseline, "trial_baseline": {"val_loss": base[0], "latency_b1_ms": base[1],
                                                            "val_curve": {str(k): v for k, v in base_curve.items()}},
             "reference_point": list(STATE["ref"]), "latency_limit_ms": STATE["limit_ms"],
             "torch_threads": torch.get_num_threads(), "latency_threads": LATENCY_THREADS}
    path = write_results("search", "nas_charlm", args=args,
                         results={"studies": [{k: v for k, v in x.items()} for x in studies],
                                  "winner": winner, "confirmation": confirmation},
                         summary=summary, peers={"optuna": {"version": optuna.__version__}}, packages=("optuna",),
                         extra={"setup": setup, "predictor": predictor_doc})
    print(f"wrote {path}\n{summary}" if path else summary)
    return 0


def _limited(param: Any, largest: int | None) -> Any:
    """The parameter without values above ``largest`` (smoke mode's small candidates)."""
    from nnforge.search import Param

    if largest is None:
        return param
    if param.kind == "categorical":
        return Param(kind="categorical", choices=[c for c in param.choices if c <= largest])
    return Param(kind=param.kind, low=param.low, high=min(param.high, largest))


if __name__ == "__main__":
    sys.exit(main())
