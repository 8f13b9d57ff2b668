"""The leaf of cnnlab: where things live, the config schema, its enums and the knob list.

Everything here is plain Python (no torch, no Hydra, no MLflow) and imports nothing from cnnlab,
so any module may import it.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

PACKAGE = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE.parent  # a source checkout's top (where conf/ stays in this repository)
PROJECT_MARKERS = ("conf/config.yaml", "runs/mlflow.db")  # what makes a directory a cnnlab project


def package_conf() -> Path:
    """The default configs: cnnlab/conf in an installed package, conf/ of a source checkout."""
    inside = PACKAGE / "conf"
    return inside if (inside / "config.yaml").is_file() else SOURCE_ROOT / "conf"


def project_root() -> Path:
    """The user's project: the working directory, or its nearest parent that is a cnnlab project (it has
    conf/config.yaml, as `cnnlab init` makes, or a store in runs/); the working directory when none is."""
    cwd = Path.cwd().resolve()
    for directory in (cwd, *cwd.parents):
        if any((directory / marker).exists() for marker in PROJECT_MARKERS):
            return directory
    return cwd


def conf_dirs() -> List[Path]:
    """Where configs are found, first match wins: $CNNLAB_CONF_DIR or the project's conf/, then cnnlab's own."""
    own = Path(os.environ.get("CNNLAB_CONF_DIR", project_root() / "conf")).resolve()
    dirs = [own] if own.is_dir() else []
    return dirs + [d for d in [package_conf().resolve()] if d not in dirs]


def conf_dir() -> Path:
    """The primary config directory: the first of conf_dirs() with a config.yaml."""
    return next(d for d in conf_dirs() if (d / "config.yaml").is_file())


def runs_dir() -> Path:
    """Run directories and the default MLflow store: `runs/` of the project, or $CNNLAB_RUNS_DIR."""
    return Path(os.environ.get("CNNLAB_RUNS_DIR", project_root() / "runs")).resolve()


def safe_name(name: str) -> str:
    """`name` (an experiment, sweep or run name as the user gave it) as one safe path component: never a
    separator, `..` or a leading dot; a name that had to change gets a short hash, so two names never share
    a directory."""
    text = re.sub(r"[^A-Za-z0-9._+=,@-]+", "_", str(name)).strip("._").lstrip("-")[:80]  # "-x": read as an option
    if text == name:
        return text
    return f"{text or 'name'}-{hashlib.sha1(str(name).encode()).hexdigest()[:6]}"


def duration(text) -> Optional[float]:
    """Seconds in '90s', '5m', '1h30m', '2.5m' or '300'; None if `text` is not a positive duration."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", str(text))
    if not match or not any(match.groups()):
        return None
    h, m, s = (float(g or 0) for g in match.groups())
    seconds = 3600 * h + 60 * m + s
    return seconds if seconds > 0 else None


class Precision(str, Enum):
    auto = "auto"  # bf16 where the hardware runs it fast, else fp16 on CUDA, else fp32
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Optimizer(str, Enum):
    sgd = "sgd"
    adam = "adam"
    adamw = "adamw"
    muon = "muon"  # Muon (muon_lr) on conv filters and hidden dense weights, SGD (lr) on the rest: cnnlab/muon.py


class Scheduler(str, Enum):
    constant = "constant"
    step = "step"  # multiply by lr_gamma every lr_step_epochs
    cosine = "cosine"  # per step, from lr to 0
    onecycle = "onecycle"  # per step, warm up to lr over the first 25%, then anneal
    triangle = "triangle"  # per step, linear 0.2*lr -> lr over the first 23%, then linear to 0.07*lr
    linear = "linear"  # per step, linear from lr to 0 (airbench94_muon's)


class Flip(str, Enum):
    random = "random"  # each image flipped with probability 1/2 every epoch
    alternating = "alternating"  # random in epoch 1, then each image flipped every other epoch
    none = "none"


class Pool(str, Enum):
    max = "max"
    avg = "avg"
    min = "min"


class Activation(str, Enum):
    relu = "relu"
    relu6 = "relu6"
    leaky_relu = "leaky_relu"
    elu = "elu"
    gelu = "gelu"
    silu = "silu"
    mish = "mish"
    tanh = "tanh"
    sigmoid = "sigmoid"


@dataclass
class DataConfig:
    name: str = "cifar10"  # cifar10 | synthetic
    root: Optional[str] = None  # cache directory; null: $CNNLAB_DATA_DIR, else ~/.cache/cnnlab
    train_fraction: float = 1.0  # seeded, stratified fraction of the training split
    download: bool = True  # fetch CIFAR-10 with torchvision when it is not in the cache
    url: str = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    md5: str = "c58f30108f718f92721af3b95e74349a"
    n_train: Optional[int] = None  # synthetic only: training images (conf/data/synthetic.yaml)
    n_test: Optional[int] = None  # synthetic only: test images


@dataclass
class EvalConfig:
    test_every_epoch: bool = True  # per-epoch test curve; the final test score is always taken
    targets: List[str] = field(default_factory=list)  # shifted test sets, e.g. [gaussian_noise,blur,cifar10_1]
    severity: int = 3  # corruption severity 1-5


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///<runs>/mlflow.db


@dataclass
class Config:
    arch: Dict[str, Any] = field(default_factory=dict)  # name + architecture parameters
    data: DataConfig = field(default_factory=DataConfig)
    experiment: str = "cifar10"  # MLflow experiment, and runs/<experiment>/
    run_name: Optional[str] = None  # null: the run's log ID (T<n>)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:<index> | mps
    precision: Precision = Precision.auto
    threads: int = 0  # CPU threads for torch; 0: every core, fewer while other work keeps some busy (ThreadTuner)
    # the knobs the exercise varies
    batch_size: int = 128
    epochs: int = 10
    max_steps: int = 0  # stop after this many training steps, the schedule spanning them; 0: all the epochs
    budget: Optional[str] = None  # e.g. 90s, 5m, 1h30m: as many steps as end the whole run within it (cnnlab/budget.py)
    lr: float = 1e-3  # peak learning rate
    optimizer: Optimizer = Optimizer.adam
    momentum: float = 0.9  # sgd, and muon's SGD part
    muon_lr: float = 0.24  # optimizer=muon: Muon's rate for the weight matrices (airbench94_muon's)
    muon_momentum: float = 0.6  # optimizer=muon: Muon's Nesterov momentum
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0
    decoupled_wd: bool = False  # decay weights outside the gradient (p -= lr_t * wd * p), as AdamW does
    norm_lr_scale: float = 1.0  # learning-rate multiplier for BatchNorm parameters (weight decay divided by it)
    ema: float = 0.0  # evaluate an exponential moving average of the weights with this decay per step; 0: off
    lookahead: bool = False  # every 5 steps continue from a slow average of the weights (airbench's schedule)
    compile: bool = False  # torch.compile the model; compile time is logged apart from training time
    scheduler: Scheduler = Scheduler.constant
    lr_step_epochs: int = 10  # scheduler=step only
    lr_gamma: float = 0.1  # scheduler=step only
    label_smoothing: float = 0.0
    augment: bool = True  # random crop (translate px of padding) + horizontal flip
    translate: int = 4  # augment: random translation by up to this many pixels (zero padding)
    flip: Flip = Flip.random  # augment: horizontal flips
    image_size: int = 32  # inputs are resized to image_size x image_size
    val_split: float = 0.1  # share of train held out (stratified) to choose the best epoch
    early_stopping: int = 0  # stop after this many epochs without a better val_acc; 0: off
    tta: bool = False  # final test score averaged over mirrored and 1-pixel-shifted views (6 passes)
    # architecture knobs: null means the architecture's own default
    dense_units: Optional[int] = None  # 0 removes the hidden dense layer
    dropout: Optional[float] = None
    batch_norm: Optional[bool] = None
    pool: Optional[Pool] = None
    activation: Optional[Activation] = None
    width: Optional[float] = None  # channel multiplier
    depth: Optional[int] = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# the architecture knobs: top-level keys an architecture's builder may take (see models/__init__.py)
KNOBS = ("dense_units", "dropout", "batch_norm", "pool", "activation", "width", "depth")

# config keys that do not change what a run computes: left out of a trial's identity
NOT_IN_KEY = ("experiment", "run_name", "threads", "tracking")

# key -> (is the value valid?, what is valid)
RANGES = {
    "experiment": (lambda v: 0 < len(v.strip()) and len(v) <= 500, "a name of 1 to 500 characters (MLflow's limit)"),
    "seed": (lambda v: 0 <= v < 2 ** 32, "an integer in [0, 2^32)"),
    "device": (lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
               "auto, cpu, cuda, cuda:<GPU index> or mps"),
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "epochs": (lambda v: v >= 1, "an integer >= 1"),
    "max_steps": (lambda v: v >= 0, "an integer >= 0 (0: all the epochs)"),
    "budget": (lambda v: duration(v) is not None, "a duration such as 90s, 5m, 1h30m or 300 (seconds), above 0"),
    "lr": (lambda v: v > 0, "a number > 0"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "muon_lr": (lambda v: v > 0, "a number > 0"),
    "muon_momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "lr_step_epochs": (lambda v: v >= 1, "an integer >= 1"),
    "lr_gamma": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "label_smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "image_size": (lambda v: 8 <= v <= 1024, "an integer in [8, 1024]"),
    "val_split": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "early_stopping": (lambda v: v >= 0, "an integer >= 0 (0 turns it off)"),
    "threads": (lambda v: v >= 0, "an integer >= 0 (0 keeps torch's default)"),
    "translate": (lambda v: 0 <= v <= 16, "an integer in [0, 16]"),
    "ema": (lambda v: 0 <= v < 1, "a number in [0, 1) (0 turns it off)"),
    "norm_lr_scale": (lambda v: v > 0, "a number > 0"),
    "dense_units": (lambda v: v >= 0, "an integer >= 0 (0 removes the hidden dense layer)"),
    "dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "width": (lambda v: v > 0, "a number > 0"),
    "depth": (lambda v: v >= 1, "an integer >= 1"),
    "data.train_fraction": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "data.n_train": (lambda v: v >= 10, "an integer >= 10"),
    "data.n_test": (lambda v: v >= 10, "an integer >= 10"),
    "eval.severity": (lambda v: 1 <= v <= 5, "an integer from 1 to 5"),
}
