"""Importing nnforge must stay cheap: no optional dependency is imported."""

from __future__ import annotations

import json
import subprocess
import sys

OPTIONAL = ["transformers", "peft", "onnx", "onnxruntime", "matplotlib", "jinja2", "sklearn", "tokenizers",
            "safetensors", "typer", "yaml", "flwr", "ray", "opacus", "tenseal"]


def test_import_nnforge_imports_no_optional_dependency():
    code = ("import sys, json, nnforge, nnforge.errors, nnforge.config, nnforge.registry; "
            "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))")
    mods = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                         check=True, timeout=120).stdout))
    assert not mods & set(OPTIONAL), f"imported at 'import nnforge': {sorted(mods & set(OPTIONAL))}"


def test_public_api_resolves_lazily():
    import nnforge

    assert callable(nnforge.load_run) and callable(nnforge.run_recipe)
    assert nnforge.__version__


def test_importing_nnforge_federated_does_not_import_flower():
    code = ("import sys, json, nnforge.federated, nnforge.recipes.steps; "
            "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))")
    mods = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                         check=True, timeout=120).stdout))
    assert not mods & {"flwr", "ray", "opacus", "tenseal"}, sorted(mods & {"flwr", "ray", "opacus", "tenseal"})
