"""What a run shows while it works: a rich progress bar per epoch on a terminal, plain lines otherwise.

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
        """Yields update(done, loss, acc, img_per_s); a live bar only on a terminal."""
        if self.quiet or not self.console.is_terminal:
            yield lambda *args: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=self.console,
                      transient=True) as progress:
            task = progress.add_task("train", total=batches, stats="")

            def update(done: int, loss: float, acc: float, img_per_s: float) -> None:
                progress.update(task, completed=done,
                                stats=f"loss {loss:.3f} acc {acc:.3f} {img_per_s:,.0f} img/s")

            yield update

    @contextmanager
    def phase(self, label: str, total: int):
        """Yields update(done) for any other step that takes a while (validation, the test set, TTA, target
        sets): a live bar only on a terminal."""
        if self.quiet or not self.console.is_terminal:
            yield lambda *args: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=True) as progress:
            task = progress.add_task(label, total=total)
            yield lambda done: progress.update(task, completed=done)
