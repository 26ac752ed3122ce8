"""The variant columns of a run's figures: its saved variants, then each one's native-runtime column.

A saved variant run by ``nnforge.deploy.native`` is named ``<variant>-native`` (``Run.model("int8-native")``;
the evaluate step measures it as a variant of its own). The suffix is defined here, the lowest layer that
reads it, so the report, the generated documents and the recipes share one spelling.
"""

from __future__ import annotations

from collections.abc import Collection

NATIVE_SUFFIX = "-native"


def with_runtime_columns(variants: list[str], measured: Collection[str]) -> list[str]:
    """``variants`` plus ``<v>-native`` for each ``v`` whose native column was measured (``<v>-native_acc``)."""
    extra = [f"{v}{NATIVE_SUFFIX}" for v in variants
             if f"{v}{NATIVE_SUFFIX}" not in variants and f"{v}{NATIVE_SUFFIX}_acc" in measured]
    return variants + extra
