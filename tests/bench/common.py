"""Helpers shared by the benchmark sections."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from cnnlab.schema import SOURCE_ROOT

REPORTS = SOURCE_ROOT / "reports"


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


def cpu_line() -> str:
    """'AMD EPYC, 2 cores, precision=auto: fp32': figures from a CPU that trains in fp32 (no bf16 units) are not
    comparable with figures from one that trains in bf16."""
    from cnnlab.device import cpu

    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    precision = cpu().precision
    return f"{model}, {os.cpu_count()} cores, precision=auto: {precision}"


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
        header = f"# bench {self.name}\n\n{time.strftime('%Y-%m-%d %H:%M')}, {cpu_line()}, torch {torch.__version__}\n\n"
        path = REPORTS / f"bench-{self.name}.md"
        path.write_text(header + "\n".join(f"- {line}" for line in self.lines) + "\n")
        (REPORTS / f"bench-{self.name}.json").write_text(json.dumps(self.figures, indent=1))
        return path


def load_wanted() -> bool:
    """`make bench ARGS="... --load"`: measure with a CPU-heavy process beside cnnlab (a student's busy laptop)."""
    import os

    return os.environ.get("CNNLAB_BENCH_LOAD") == "1"


class CpuHog:
    """CPU-heavy processes beside a measurement (busy cores), spinning from `after_s` seconds after entering (a load
    that arrives in the middle of a run), stopped by their PIDs on leaving; the kernel stops them if the bench dies."""

    def __init__(self, after_s: float = 0.0, processes: int = 1):
        self.after_s, self.processes, self.procs = after_s, processes, []

    def __enter__(self) -> "CpuHog":
        import ctypes
        import signal
        import subprocess
        import sys

        def die_with_parent():  # (tied to the thread that starts it: this one, the bench's main thread)
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

        code = f"import time\ntime.sleep({self.after_s})\nwhile True:\n    pass"
        self.procs = [subprocess.Popen([sys.executable, "-c", code], preexec_fn=die_with_parent)
                      for _ in range(self.processes)]
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
