"""Benchmark: nnforge's native int8 encoder with its linear layers on AMX tiles vs on AVX-512 VNNI, same process.

    python benchmarks/quantize/native_tiles.py            # full: 4 shapes, 30 interleaved rounds each
    python benchmarks/quantize/native_tiles.py --quick    # 2 shapes, 10 rounds
    python benchmarks/quantize/native_tiles.py --smoke    # one small shape, 3 rounds; writes nothing

Setup: an all-MiniLM-L6-v2-shaped BERT (6 layers, 384 wide, 12 heads, FFN 1,536; random weights: speed does not
depend on them, and nothing is downloaded) quantized with ``W8A8Config(activations="dynamic",
smoothing="smoothquant")``, run by ``nnforge.deploy.native.NativeEncoder`` with torch's threads (2 here).
``vnni`` and ``amx`` are the same compiled encoder with ``nnforge.deploy.native.amx(False / True)``: every layer
rounds activations to int8 per token and per block of 64 inputs and scales each block's int32 sums into fp32 in the
same order, so the two give the same bits (checked here on every shape before timing). Shapes (sequences x tokens):
1 x 10 (the MiniLM benchmark's batch-1 line), 1 x 45 and 16 x 45 (a quickstart passage is about 45 tokens; 16 is
what a busy ``nnforge serve`` batches), 32 x 64. Both variants are timed in interleaved rounds
(``nnforge.hardware.interleave``, shuffled order per round); ``speedup`` is vnni / amx, ratio of medians with a
bootstrap 95% interval.

Needs a CPU with AMX-INT8 (Intel Sapphire Rapids or later) whose kernel grants the tile state; elsewhere it stops
with exit code 2 and says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, pick, ratio_with_ci, spread, write_results  # noqa: E402


def encoder(layers: int, seed: int) -> Any:
    from transformers import BertConfig, BertModel

    from nnforge.compress import W8A8Config, quantize_
    from nnforge.deploy.native import NativeEncoder

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=layers, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512)
    model = BertModel(cfg, add_pooling_layer=False).eval()
    calib = [torch.randint(0, cfg.vocab_size, (4, 45)) for _ in range(4)]
    quantize_(model, W8A8Config(activations="dynamic", smoothing="smoothquant"), calibration=calib,
              forward=lambda m, b: m(input_ids=b))
    return NativeEncoder(model)


def main(argv: list[str] | None = None) -> int:
    from nnforge.deploy.native import amx
    from nnforge.hardware import interleave

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_mode_args(ap)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not amx(True):
        sys.stderr.write("native_tiles: no AMX-INT8 here (the CPU or compiler lacks it, or Linux did not grant the "
                         "tile state); nothing to compare\n")
        return 2
    shapes = pick(args, full=[(1, 10), (1, 45), (16, 45), (32, 64)], quick=[(1, 45), (16, 45)], smoke=[(2, 12)])
    rounds = pick(args, full=30, quick=10, smoke=3)
    enc = encoder(pick(args, full=6, quick=6, smoke=1), args.seed)
    rows: list[dict[str, Any]] = []
    for batch, tokens in shapes:
        g = torch.Generator().manual_seed(args.seed + batch * 1000 + tokens)
        ids = torch.randint(1000, 30000, (batch, tokens), generator=g)
        mask = torch.ones(batch, tokens, dtype=torch.long)
        outs = {}
        for on in (False, True):
            amx(on)
            outs[on] = enc(ids, mask)
        if not torch.equal(outs[False], outs[True]):
            raise SystemExit(f"AMX and VNNI differ at {batch} x {tokens}: max |diff| "
                             f"{(outs[False] - outs[True]).abs().max().item():.3g}")

        def run(on: bool, ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> object:
            amx(on)
            return enc(ids, mask)

        calls = max(1, 24 // batch)
        samples = interleave({"vnni": lambda: run(False), "amx": lambda: run(True)}, rounds=rounds,
                             calls_per_round=calls, warmup=2, seed=args.seed)
        ratio, ci = ratio_with_ci(samples["vnni"], samples["amx"])
        rows.append({"batch": batch, "tokens": tokens, "vnni_ms": spread(samples["vnni"]),
                     "amx_ms": spread(samples["amx"]), "speedup": ratio, "speedup_ci": list(ci),
                     "same_bits": True})
        sys.stdout.write(f"{batch:3} x {tokens:3}: vnni {spread(samples['vnni'])['median']:8.2f} ms  amx "
                         f"{spread(samples['amx'])['median']:8.2f} ms  x{ratio:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]\n")
    amx(True)
    busy = next((r for r in rows if r["batch"] == 16), rows[-1])
    one = next((r for r in rows if r["batch"] == 1 and r["tokens"] == 10), rows[0])
    summary = {"speedup_b16": busy["speedup"], "speedup_b16_ci": busy["speedup_ci"],
               "speedup_b1": one["speedup"], "speedup_b1_ci": one["speedup_ci"], "same_bits": True,
               "note": f"AMX over VNNI for the whole encoder, {busy['batch']} x {busy['tokens']} tokens and "
                       f"{one['batch']} x {one['tokens']}; outputs bit-identical on every shape"}
    path = write_results("quantize", "native_tiles", args=args, results=rows, summary=summary,
                         extra={"threads": torch.get_num_threads()})
    if path:
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
