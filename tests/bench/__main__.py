"""`make bench`: cnnlab's figures on real CIFAR-10, printed and written to reports/bench-<name>.md.

    python -m tests.bench                  # every quick benchmark
    python -m tests.bench train            # one section
    python -m tests.bench train --accuracy # also the long accuracy runs (minutes to an hour)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from cnnlab.config import PROJECT_ROOT

REPORTS = PROJECT_ROOT / "reports"


def matmul_peak(dtype_name: str, n: int = 2048, seconds: float = 2.0) -> float:
    """GFLOP/s of an n x n matmul on this CPU, the roofline the training figures are read against."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return reps * 2 * n ** 3 / (time.perf_counter() - start) / 1e9


class Report:
    def __init__(self, name: str):
        self.name, self.lines, self.figures = name, [], {}

    def add(self, key: str, value, text: str) -> None:
        self.figures[key] = value
        self.lines.append(text)
        print(text, flush=True)

    def write(self) -> Path:
        import torch

        REPORTS.mkdir(exist_ok=True)
        header = (f"# bench {self.name}\n\n{time.strftime('%Y-%m-%d %H:%M')}, {platform.processor() or platform.machine()}, "
                  f"{torch.get_num_threads()} threads, torch {torch.__version__}\n\n")
        path = REPORTS / f"bench-{self.name}.md"
        path.write_text(header + "\n".join(f"- {line}" for line in self.lines) + "\n")
        (REPORTS / f"bench-{self.name}.json").write_text(json.dumps(self.figures, indent=1))
        return path


def main(argv=None) -> int:
    from . import sections

    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", help=f"among: {', '.join(sections.ALL)} (default: all)")
    parser.add_argument("--accuracy", action="store_true", help="also the long accuracy runs on real data")
    args = parser.parse_args(argv)
    unknown = set(args.sections) - set(sections.ALL)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; valid: {', '.join(sections.ALL)}")
    from cnnlab.data import cache_info

    if cache_info() is None:
        print("bench needs real CIFAR-10 in the cache: `cnnlab data import PATH` (or `make bench DATA=PATH`)",
              file=sys.stderr)
        return 2
    for name in args.sections or list(sections.ALL):
        report = Report(name)
        sections.ALL[name](report, accuracy=args.accuracy)
        print(f"-> {report.write()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
