"""The plain servers a user would write around a run's model, for ``benchmarks/serve/quickstart.py``: FastAPI +
uvicorn (one worker), a synchronous ``/predict`` that runs the model per request (FastAPI runs it in its thread
pool), no batching, no guard, no ledger, no tokens.

    python benchmarks/serve/_baselines.py --kind torch-fp32 --run RUN --runs-dir DIR --port 8101
    python benchmarks/serve/_baselines.py --kind torch-int8 ...   # the same int8 weights nnforge serves
    python benchmarks/serve/_baselines.py --kind ort --onnx model.onnx ...   # nnforge's ONNX export, ONNX Runtime

ONNX Runtime as its documentation recommends for a server: one InferenceSession for the process, shared by all
requests (``run`` is thread-safe), default thread settings.
"""

# no `from __future__ import annotations`: FastAPI must see the request model defined in app_for, not its name

import argparse
from typing import Any


def app_for(kind: str, run: str, runs_dir: str, onnx: str | None) -> Any:
    import torch
    from fastapi import FastAPI
    from pydantic import BaseModel

    from nnforge.recipes import load_run

    r = load_run(run, runs_dir, use="benchmark baseline")
    labels = r.label_names
    model: Any = r.model("fp32" if kind == "torch-fp32" else "int8")

    if kind == "ort":
        import numpy as np
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        tokenizer = model.tokenizer

        def probs(texts: list[str]) -> Any:
            b = tokenizer(texts, padding=True, truncation=True, max_length=model.max_length, return_tensors="np")
            logits = session.run(["logits"], {"input_ids": b["input_ids"].astype(np.int64),
                                              "attention_mask": b["attention_mask"].astype(np.int64)})[0]
            e = np.exp(logits - logits.max(-1, keepdims=True))
            return e / e.sum(-1, keepdims=True)
    else:
        def probs(texts: list[str]) -> Any:
            with torch.inference_mode():
                return model.predict_proba(texts).numpy()

    class Req(BaseModel):
        inputs: list[str]

    app = FastAPI()

    @app.post("/predict")
    def predict(req: Req) -> dict[str, Any]:
        p = probs(req.inputs)
        return {"predictions": [{"label": labels[int(row.argmax())], "confidence": float(row.max())} for row in p]}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "kind": kind}

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["torch-fp32", "torch-int8", "ort"], required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--onnx")
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    import uvicorn

    uvicorn.run(app_for(a.kind, a.run, a.runs_dir, a.onnx), host="127.0.0.1", port=a.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
