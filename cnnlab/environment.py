"""What a run records, beside its config and seed, so that it can be run again (`cnnlab reproduce`,
reproduction.py): the git commit and, when the tree has changes, their diff (artifact repro/git.diff); the
installed packages (artifact repro/requirements.txt, in `pip freeze`'s format, and their hash); the content hash
of the data it trained on; torch's and Python's versions; the CPU and GPU model and the thread count.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from pathlib import Path
from typing import Dict, Optional, Tuple

from .record import Tag
from .schema import project_root

# tag -> what it is, in the words a difference is reported with
ENVIRONMENT = {
    "mlflow.source.git.commit": "git commit", Tag.GIT_DIFF_HASH: "uncommitted changes (hash of git diff)",
    Tag.PACKAGES_HASH: "installed packages (hash)", "cnnlab.torch": "torch", Tag.PYTHON: "Python",
    "cnnlab.version": "cnnlab", Tag.DATA_HASH: "data (content hash)", Tag.CPU: "CPU", Tag.GPU: "GPU",
    "cnnlab.device": "device", "cnnlab.precision": "precision", Tag.THREADS: "CPU threads",
}


def data_hash(ds) -> str:
    """The content hash of a dataset's images, labels and class names (what a run trained and was tested on),
    computed once per loaded dataset (a sweep worker's trials share one)."""
    if getattr(ds, "_content_hash", None):
        return ds._content_hash
    digest = hashlib.sha256()
    for tensor in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update("\n".join(ds.classes).encode())
    object.__setattr__(ds, "_content_hash", digest.hexdigest()[:16])
    return ds._content_hash


@functools.lru_cache(maxsize=1)
def packages() -> str:
    """The installed distributions, one `name==version` a line (pip freeze's format), sorted; read once per process
    (0.1 s: a sweep worker's trials share it, as they share the code it imported)."""
    from importlib import metadata

    found = {(d.metadata["Name"] or "?").lower(): d.version for d in metadata.distributions()}
    return "".join(f"{name}=={version}\n" for name, version in sorted(found.items()))


def git_diff() -> Optional[str]:
    """The uncommitted changes to tracked files (git diff HEAD), or None: no changes, or not a git checkout."""
    try:
        out = subprocess.run(["git", "diff", "HEAD"], cwd=project_root(), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 and out.stdout.strip() else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(ds, device: str) -> Tuple[Dict[str, str], Dict[str, str]]:
    """(tags, files) a new run on `ds` and `device` ('cpu', 'cuda:0') records: the environment's tags, and the
    artifacts of repro/ by name."""
    import torch

    frozen, diff = packages(), git_diff()
    tags = {Tag.PYTHON: platform.python_version(), Tag.CPU: cpu_model(), Tag.THREADS: str(torch.get_num_threads()),
            Tag.DATA_HASH: data_hash(ds), Tag.PACKAGES_HASH: hashlib.sha256(frozen.encode()).hexdigest()[:16],
            Tag.GIT_DIFF_HASH: hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else "none"}
    if device.startswith("cuda"):
        tags[Tag.GPU] = torch.cuda.get_device_name(torch.device(device))
    return tags, {"requirements.txt": frozen, **({"git.diff": diff} if diff else {})}
