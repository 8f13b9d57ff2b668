"""What a run shows while it works: a progress bar per epoch on a terminal (rich) or in a notebook (tqdm), plain
lines otherwise.

Every line also goes to the run's log file.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional


class Reporter:
    def __init__(self, log_path: Optional[Path] = None, quiet: bool = False):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.log_path = log_path
        self.quiet = quiet

    def line(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False, soft_wrap=True)
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {text}\n")

    @contextmanager
    def epoch(self, epoch: int, epochs: int, batches: int):
        """Yields update(done, loss, acc, img_per_s) for a training epoch's bar."""
        with self._bar(f"epoch {epoch}/{epochs}", batches) as bar:
            yield lambda done, loss, acc, img_per_s: bar(done, f"loss {loss:.3f} acc {acc:.3f} {img_per_s:,.0f} img/s")

    @contextmanager
    def phase(self, label: str, total: int):
        """Yields update(done) for any other step that takes a while (validation, the test set, TTA, target sets)."""
        with self._bar(label, total) as bar:
            yield lambda done: bar(done, "")

    @contextmanager
    def _bar(self, label: str, total: int):
        """Yields bar(done, stats): a live bar on a terminal (rich), a notebook's progress bar in Jupyter or Colab
        (tqdm's widget, or its text bar without ipywidgets), nothing otherwise."""
        if self.quiet or not (self.console.is_terminal or self.console.is_jupyter):
            yield lambda done, stats: None
        elif self.console.is_jupyter:
            import warnings

            with warnings.catch_warnings():  # (tqdm warns when ipywidgets is missing, and falls back to text)
                warnings.simplefilter("ignore")
                from tqdm.auto import tqdm

                bar = tqdm(total=total, desc=label, leave=False)

            def update(done: int, stats: str) -> None:
                bar.n = done
                bar.set_postfix_str(stats, refresh=False)
                bar.refresh()

            try:
                yield update
            finally:
                bar.close()
        else:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                          TimeRemainingColumn(), console=self.console, transient=True) as progress:
                task = progress.add_task(label, total=total, stats="")
                yield lambda done, stats: progress.update(task, completed=done, stats=stats)
