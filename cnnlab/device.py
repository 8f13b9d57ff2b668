"""The device a run computes on, in one place: which device, which precision, loss scaling, timing, random state.

`Device.open(device="auto", precision="auto")` picks the device and its autocast dtype and sets torch's fast
settings for it; training, budget=, evaluation, resume and sweep workers all take these from the one object:

- precision: `choose_precision` is a table of what a device can do natively. bf16 only where it is native
  (a CPU with AVX512-BF16 or AMX, a GPU of compute capability 8.0 or more: A100, H100, RTX 30xx and later);
  fp16 with loss scaling on older GPUs (Colab's T4, V100), where bf16 would be emulated and slow; else fp32.
- `scaler()`: the GradScaler fp16 needs (a disabled one otherwise).
- `now()`: a clock that first waits for the device's queued work, so that a time read after GPU work
  measures the work and not only its launch.
- `rng_state()` / `set_rng_state()`: every random stream a run draws from (the CPU's and the device's),
  for checkpoints that resume exactly.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Callable, Optional

from .errors import CnnlabError

PRECISIONS = ("fp32", "bf16", "fp16")


def choose_precision(requested: str, device_type: str, native_bf16: bool) -> str:
    """The precision a run uses for `requested` (auto, fp32, bf16, fp16) on a device of `device_type` (cpu, cuda,
    mps) that does or does not compute bf16 natively.

    | device                  | auto  | fp16    |
    | cpu with AVX512-BF16/AMX | bf16  | refused |
    | other cpu               | fp32  | refused |
    | cuda, capability >= 8.0 | bf16  | fp16    |
    | cuda, capability < 8.0  | fp16  | fp16    |
    | mps                     | fp32  | fp16    |
    """
    if requested == "auto":
        if device_type == "cuda":
            return "bf16" if native_bf16 else "fp16"
        return "bf16" if device_type == "cpu" and native_bf16 else "fp32"
    if requested == "fp16" and device_type == "cpu":
        raise CnnlabError("precision=fp16 is for GPUs; on the CPU use bf16 (native on CPUs with AVX512-BF16 or "
                          "AMX) or fp32.")
    if requested not in PRECISIONS:
        raise CnnlabError(f"precision={requested} is not a precision. Valid: auto, {', '.join(PRECISIONS)}.")
    return requested


def native_bf16(device) -> bool:
    """Whether `device` (the one actually used, not the current one) computes bf16 natively."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def pick_device(name: str):
    """The torch.device for a config's `device` (auto: a CUDA GPU, else Apple's GPU, else the CPU)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise CnnlabError(f"device={name} but torch sees no CUDA GPU here. Valid: auto, cpu (or mps on Apple).")
        index = int(name.partition(":")[2] or torch.cuda.current_device())
        if index >= count:
            raise CnnlabError(f"device={name} but torch sees {count} GPU(s) here: valid indexes are 0 to "
                              f"{count - 1} (cuda:0 ... cuda:{count - 1}).")
        return torch.device("cuda", index)  # with its index: every question below is about this GPU
    if name == "mps" and not torch.backends.mps.is_available():
        raise CnnlabError("device=mps but this machine has no Apple GPU. Valid: auto, cpu (or cuda with a GPU).")
    return torch.device(name)


def tune_malloc() -> None:
    """Keep freed activation buffers in the heap: glibc otherwise returns every large block to the
    OS and the next step page-faults it back, which nearly halves CPU training speed for small CNNs."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve blocks up to 1 GiB from the heap
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD: do not give the heap back
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


class Device:
    """A torch device with its precision, and what depends on both (see the module's notes)."""

    def __init__(self, device, precision: str, clock: Callable[[], float] = time.perf_counter):
        import torch

        self.device, self.precision, self.clock = device, precision, clock
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.tune_threads = False

    @classmethod
    def open(cls, device: str = "auto", precision: str = "auto", threads: int = 0,
             clock: Callable[[], float] = time.perf_counter) -> "Device":
        """The device a config names, with torch's fast settings for it; `clock` times it (tests inject one)."""
        import torch

        tune_malloc()
        torch.set_flush_denormal(True)
        if threads:
            torch.set_num_threads(threads)
        dev = pick_device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)  # kernels, caches and library handles on this GPU, not on cuda:0
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        opened = cls(dev, choose_precision(precision, dev.type, native_bf16(dev)), clock)
        opened.tune_threads = dev.type == "cpu" and not threads  # the thread count is cnnlab's to choose
        return opened

    @property
    def type(self) -> str:
        return self.device.type

    def __str__(self) -> str:
        return str(self.device)

    def autocast(self):
        """Mixed precision in the run's dtype, or nothing for fp32."""
        return autocast(self.device, self.amp_dtype)

    def scaler(self):
        """The loss scaler: active for fp16 (whose small range underflows gradients), a no-op otherwise."""
        import torch

        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def synchronize(self) -> None:
        """Wait for the work queued on the device (GPUs run it asynchronously; the CPU has none queued)."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def now(self) -> float:
        """Seconds on the clock once the device's queued work is done."""
        self.synchronize()
        return self.clock()

    def thread_tuner(self) -> Optional[ThreadTuner]:
        """A ThreadTuner for a CPU whose thread count cnnlab chooses (threads=0), else None."""
        import torch

        if not self.tune_threads or torch.get_num_threads() < 2:
            return None
        return ThreadTuner(torch.get_num_threads(), self.clock, torch.set_num_threads)

    def rng_state(self) -> dict:
        """The state of every random stream a run draws from: the CPU's and this GPU's."""
        import torch

        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state) -> None:
        """Restore rng_state() (or a checkpoint's older CPU-only state, a bare tensor)."""
        import torch

        if not isinstance(state, dict):
            state = {"cpu": state}
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)


def runnable() -> int:
    """Threads running or ready to run on the whole machine right now (Linux's /proc/stat procs_running; 0 where
    there is none)."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_running"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class ThreadTuner:
    """On a CPU that other work shares, as many threads as there are cores the other work leaves free.

    Every parallel operation waits for its slowest thread, and a thread whose core also runs another process (a
    browser, another training) is slow: with one busy core out of two, two threads trained tf_cnn at 21% of its
    quiet speed and one thread at 68%. After each step the tuner counts the machine's runnable threads beyond its
    own (the kernel's procs_running, a file read); every `every_s` seconds their mean is the other work, in cores,
    and that many cores are left to it: taken from half a core's worth, given back below 0.3, so that the count does
    not flap. Counting costs nothing, unlike timing steps at other thread counts (a step at half speed every few
    seconds cost fast94 up to 15% of its training time), and the CPU time the other work gets is no measure: our
    threads, spinning while they wait for each other, leave it little. `clock`, `set_threads` and `sample`
    (runnable) are injected by tests."""

    def __init__(self, most: int, clock: Callable[[], float], set_threads: Callable[[int], None],
                 sample: Callable[[], int] = runnable, every_s: float = 2.0):
        self.most, self.clock, self.set_threads, self.sample, self.every_s = most, clock, set_threads, sample, every_s
        self.threads, self.since, self.counts = most, clock(), []

    def after_step(self, *args) -> None:
        self.counts.append(max(0, self.sample() - self.threads))
        now = self.clock()
        if now - self.since < self.every_s:
            return
        wanted = self._wanted()
        self.since, self.counts = now, []
        if wanted != self.threads:
            self.threads = wanted
            self.set_threads(wanted)

    def _wanted(self) -> int:
        others = sum(self.counts) / len(self.counts)  # cores' worth of other work
        taken, given_back = self.most - int(others + 0.5), self.most - int(others + 0.7)
        wanted = taken if taken < self.threads else given_back if given_back > self.threads else self.threads
        return max(1, min(self.most, wanted))

    def pending(self) -> bool:
        """Will the next check change the thread count, as the counts since the last one stand? (The steps until then
        run at a speed that is about to end: budget='s steering does not stop a run on it.)"""
        return bool(self.counts) and self._wanted() != self.threads

    def epoch_started(self, *args) -> None:
        pass


def autocast(device, amp_dtype):
    """Mixed precision in `amp_dtype` on `device`, or nothing for fp32 (None)."""
    import torch

    return torch.autocast(device.type, amp_dtype) if amp_dtype is not None else nullcontext()


def cpu() -> Device:
    """The CPU at its native precision, for work outside a run (a report's predictions)."""
    import torch

    return Device(torch.device("cpu"), choose_precision("auto", "cpu", native_bf16(torch.device("cpu"))))
