"""The variant columns of a run's figures: its saved variants, then each one's native-runtime column; and
where a saved variant's file is (always inside its run folder).

A saved variant run by ``nnforge.deploy.native`` is named ``<variant>-native`` (``Run.model("int8-native")``;
the evaluate step measures it as a variant of its own). The suffix is defined here, the lowest layer that
reads it, so the report, the generated documents and the recipes share one spelling.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from nnforge.errors import IntegrityError

NATIVE_SUFFIX = "-native"


def with_runtime_columns(variants: list[str], measured: Collection[str]) -> list[str]:
    """``variants`` plus ``<v>-native`` for each ``v`` whose native column was measured (``<v>-native_acc``)."""
    extra = [f"{v}{NATIVE_SUFFIX}" for v in variants
             if f"{v}{NATIVE_SUFFIX}" not in variants and f"{v}{NATIVE_SUFFIX}_acc" in measured]
    return variants + extra


def variant_path(run_dir: Path, name: str, relative: object) -> Path:
    """The file of saved variant ``name`` (``relative`` as the run's config.json lists it), refused when it
    points outside the run folder: a run folder may come from someone else, and reads only its own files."""
    path = run_dir / str(relative)
    if not path.resolve().is_relative_to(run_dir.resolve()):
        raise IntegrityError(f"{run_dir / 'config.json'}: variant {name!r} points outside the run folder "
                             f"({relative!r}); a run reads only its own files")
    return path
