"""The built-in tier kinds, one module each: ``local`` (a model in this process), ``http`` (another ``nnforge
serve`` server), ``openai`` (any OpenAI-compatible chat endpoint) and ``human`` (a review queue, or an oracle in
benchmarks). Each registers itself when imported; a new kind is a new module here (or anywhere, with
:func:`~nnforge.deploy.cascade.register_tier`)."""

from __future__ import annotations

from nnforge.registry import import_submodules

import_submodules(__name__, __path__)
