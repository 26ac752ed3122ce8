"""A rich progress bar for :func:`~nnforge.train.fit`: a callback, opt-in with ``progress=True``."""

from __future__ import annotations

from typing import Any

from nnforge.train._events import Callback, TrainState

__all__ = ["ProgressBar"]


class ProgressBar(Callback):
    """Shows steps, loss, lr and the last evaluation on rank 0; other ranks show nothing.

    Args:
        console: a ``rich.console.Console`` to draw on (default: a new one on stdout).
    """

    def __init__(self, console: Any = None) -> None:
        self.console = console
        self._progress: Any = None
        self._task: Any = None

    def fit_start(self, state: TrainState) -> None:
        if not state.is_main:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                  TextColumn("{task.fields[info]}"), console=self.console, transient=False)
        self._progress.start()
        self._task = self._progress.add_task("train", total=state.config.max_steps, completed=state.step, info="")

    def step_end(self, state: TrainState) -> None:
        self._show(state)

    def eval_end(self, state: TrainState) -> None:
        self._show(state)

    def _show(self, state: TrainState) -> None:
        if self._progress is not None:
            info = f"loss {state.loss:.4f}  lr {state.lr:.2e}"
            if state.metrics:
                info += "  eval " + " ".join(f"{k} {v:.4f}" for k, v in state.metrics.items())
            self._progress.update(self._task, completed=state.step, info=info)

    def fit_end(self, state: TrainState) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
