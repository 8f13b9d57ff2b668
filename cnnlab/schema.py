"""The leaf of cnnlab: where things live, the config schema, its enums and the knob list.

Everything here is plain Python (no torch, no Hydra, no MLflow) and imports nothing from cnnlab,
so any module may import it.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
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


class Transfer(str, Enum):
    none = "none"  # from random weights, even with init_from (the baseline)
    probe = "probe"  # the source's body frozen, a head trained: a linear probe
    finetune = "finetune"  # every layer trains from the source's weights, the body at body_lr x the rate


class Flip(str, Enum):
    random = "random"  # each image flipped with probability 1/2 every epoch
    alternating = "alternating"  # random in epoch 1, then each image flipped every other epoch
    none = "none"


class Fill(str, Enum):
    zeros = "zeros"  # black
    reflect = "reflect"  # the image mirrored at its edge (airbench's)


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


# Each config key says, once, in its field's metadata (`key()`): which column of the course's log a change to it
# shows in, what values are valid, whether it is part of a config's identity, and what it means. The knob list, the
# ranges, the identity exclusions, the log's change columns and the README's knob table are derived from that.
ARCHITECTURE = "architecture"  # its change shows in ARCHITECTURE CHANGES
TRAINING = "training"  # ... in TRAINING CHANGES
COLUMN = "column"  # it has a column of its own (LR, BATCH SIZE, EPOCH, the data sets, the target columns)
BOOKKEEPING = "bookkeeping"  # says nothing about what a run computes: runs that differ only here are repeats
LOG_COLUMNS = (ARCHITECTURE, TRAINING, COLUMN, BOOKKEEPING)


def key(default=None, *, log: str, doc: str, valid: Optional[tuple] = None, identity: bool = True, factory=None):
    """A config field: its default (or default factory), the log column its changes belong to (LOG_COLUMNS), what it
    means, (is a value valid?, what is valid) when not every value of its type is, and whether it is part of a
    config's identity (False: it does not change what a run computes, e.g. the run's name)."""
    meta = {"log": log, "doc": doc, "valid": valid, "identity": identity}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _at_least(low, text: str = "") -> tuple:
    kind = "an integer" if isinstance(low, int) else "a number"
    return (lambda v: v >= low, f"{kind} >= {low}{text}")


TORCH_NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)  # torch.optim.Muon's default Newton-Schulz coefficients
_FRACTION = (lambda v: 0 <= v < 1, "a number in [0, 1)")
_POSITIVE = (lambda v: v > 0, "a number > 0")


@dataclass
class DataConfig:
    name: str = key("cifar10", log=COLUMN, doc="the data set: cifar10 | synthetic | stl10 | svhn | an imported target")
    root: Optional[str] = key(log=BOOKKEEPING, doc="cache directory; null: $CNNLAB_DATA_DIR, else ~/.cache/cnnlab")
    train_fraction: float = key(1.0, log=COLUMN, doc="seeded, stratified fraction of the training split",
                                valid=(lambda v: 0 < v <= 1, "a number in (0, 1]"))
    download: bool = key(True, log=BOOKKEEPING, doc="fetch CIFAR-10 (and official targets) when not in the cache")
    url: str = key("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", log=BOOKKEEPING,
                   doc="where CIFAR-10 is downloaded from")
    md5: str = key("c58f30108f718f92721af3b95e74349a", log=BOOKKEEPING, doc="the download's checksum")
    n_train: Optional[int] = key(log=COLUMN, doc="synthetic only: training images (conf/data/synthetic.yaml)",
                                 valid=_at_least(10))
    n_test: Optional[int] = key(log=COLUMN, doc="synthetic only: test images", valid=_at_least(10))


@dataclass
class EvalConfig:
    test_every_epoch: bool = key(True, log=BOOKKEEPING,
                                 doc="per-epoch test curve; the final test score is always taken")
    targets: List[str] = key(log=COLUMN, factory=list,
                             doc="target sets (target columns): corruptions, cifar10_1, cifar10_c, stl10, imported ones")
    severity: int = key(3, log=COLUMN, doc="corruption severity 1-5",
                        valid=(lambda v: 1 <= v <= 5, "an integer from 1 to 5"))


@dataclass
class TrackingConfig:
    uri: Optional[str] = key(log=BOOKKEEPING, doc="null: $MLFLOW_TRACKING_URI, else sqlite:///<runs>/mlflow.db")


@dataclass
class Config:
    arch: Dict[str, Any] = key(log=ARCHITECTURE, factory=dict, doc="name + architecture parameters (arch.<param>)")
    data: DataConfig = key(log=COLUMN, factory=DataConfig, doc="the data set (data.*)")
    experiment: str = key("cifar10", log=BOOKKEEPING, identity=False, doc="MLflow experiment, and runs/<experiment>/",
                          valid=(lambda v: 0 < len(v.strip()) and len(v) <= 500,
                                 "a name of 1 to 500 characters (MLflow's limit)"))
    run_name: Optional[str] = key(log=BOOKKEEPING, identity=False, doc="null: the run's log ID (T<n>)")
    seed: int = key(0, log=BOOKKEEPING, doc="the random seed (runs differing only in it are repeats)",
                    valid=(lambda v: 0 <= v < 2 ** 32, "an integer in [0, 2^32)"))
    device: str = key("auto", log=BOOKKEEPING, doc="auto | cpu | cuda | cuda:<index> | mps",
                      valid=(lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
                             "auto, cpu, cuda, cuda:<GPU index> or mps"))
    precision: Precision = key(Precision.auto, log=TRAINING,
                               doc="auto (bf16 where native, else fp16 on CUDA, else fp32) | fp32 | bf16 | fp16")
    threads: int = key(0, log=BOOKKEEPING, identity=False,
                       doc="CPU threads for torch; 0: every core, fewer while other work keeps some busy",
                       valid=_at_least(0, " (0: every core, tuned to the load)"))
    # the knobs the exercise varies
    batch_size: int = key(128, log=COLUMN, doc="images per training step", valid=_at_least(1))
    epochs: int = key(10, log=COLUMN, doc="passes over the training split", valid=_at_least(1))
    max_steps: int = key(0, log=TRAINING, valid=_at_least(0, " (0: all the epochs)"),
                         doc="stop after this many training steps, the schedule spanning them; 0: all the epochs")
    budget: Optional[str] = key(log=TRAINING, doc="e.g. 90s, 5m, 1h30m: as many steps as end the whole run within it",
                                valid=(lambda v: duration(v) is not None,
                                       "a duration such as 90s, 5m, 1h30m or 300 (seconds), above 0"))
    lr: float = key(1e-3, log=COLUMN, doc="peak learning rate", valid=_POSITIVE)
    optimizer: Optimizer = key(Optimizer.adam, log=TRAINING, doc="sgd | adam | adamw | muon")
    momentum: float = key(0.9, log=TRAINING, doc="sgd, and muon's SGD part", valid=_FRACTION)
    muon_lr: float = key(0.24, log=TRAINING, doc="optimizer=muon: Muon's rate for the weight matrices",
                         valid=_POSITIVE)
    muon_momentum: float = key(0.6, log=TRAINING, doc="optimizer=muon: Muon's Nesterov momentum", valid=_FRACTION)
    muon_norm_every: int = key(1, log=TRAINING, valid=_at_least(1),
                               doc="optimizer=muon: rescale each weight matrix to norm sqrt(rows) before every "
                               "this-many-th step (1: every step, as airbench94_muon; cifar10-speedrun: 8)")
    muon_ns_coefficients: List[float] = key(log=TRAINING, factory=lambda: list(TORCH_NS_COEFFICIENTS),
                                            valid=(lambda v: len(v) == 3, "a list of three numbers [a, b, c]"),
                                            doc="optimizer=muon: the coefficients a, b, c of its Newton-Schulz steps "
                                            "(torch's; cifar10-speedrun's [3.4576, -4.7391, 2.0843])")
    nesterov: bool = key(False, log=TRAINING, doc="sgd only: Nesterov momentum")
    weight_decay: float = key(0.0, log=TRAINING, doc="L2 weight decay", valid=_at_least(0.0))
    decoupled_wd: bool = key(False, log=TRAINING,
                             doc="decay weights outside the gradient (p -= lr_t * wd * p), as AdamW does")
    norm_lr_scale: float = key(1.0, log=TRAINING, valid=_POSITIVE,
                               doc="learning-rate multiplier for BatchNorm parameters (weight decay divided by it)")
    ema: float = key(0.0, log=TRAINING, valid=(lambda v: 0 <= v < 1, "a number in [0, 1) (0 turns it off)"),
                     doc="evaluate an exponential moving average of the weights with this decay per step; 0: off")
    lookahead: bool = key(False, log=TRAINING,
                          doc="every 5 steps continue from a slow average of the weights (airbench's schedule)")
    compile: bool = key(False, log=TRAINING, doc="torch.compile the model; compile time is logged apart")
    scheduler: Scheduler = key(Scheduler.constant, log=TRAINING,
                               doc="constant | step | cosine | onecycle | triangle | linear")
    lr_step_epochs: int = key(10, log=TRAINING, doc="scheduler=step only", valid=_at_least(1))
    lr_gamma: float = key(0.1, log=TRAINING, doc="scheduler=step only",
                          valid=(lambda v: 0 < v <= 1, "a number in (0, 1]"))
    label_smoothing: float = key(0.0, log=TRAINING, doc="label smoothing of the loss", valid=_FRACTION)
    augment: bool = key(True, log=TRAINING, doc="random crop (translate px of padding) + horizontal flip")
    translate: int = key(4, log=TRAINING, doc="augment: random translation by up to this many pixels",
                         valid=(lambda v: 0 <= v <= 16, "an integer in [0, 16]"))
    translate_fill: Fill = key(Fill.zeros, log=TRAINING, doc="augment: what fills a translation's uncovered "
                               "pixels: zeros | reflect")
    flip: Flip = key(Flip.random, log=TRAINING, doc="augment: random | alternating | none")
    brightness: float = key(0.0, log=TRAINING, valid=_at_least(0.0),
                            doc="augment: each image shifted by a random amount in [-this, this] each epoch (in "
                            "standard deviations of the normalised images); 0: off")
    contrast: float = key(0.0, log=TRAINING, valid=(lambda v: 0 <= v < 1, "a number in [0, 1) (0 turns it off)"),
                          doc="augment: each image scaled by a random factor in [1 - this, 1 + this] each epoch, "
                          "after its brightness shift; 0: off")
    image_size: int = key(32, log=COLUMN, doc="inputs are resized to image_size x image_size",
                          valid=(lambda v: 8 <= v <= 1024, "an integer in [8, 1024]"))
    val_split: float = key(0.1, log=TRAINING, doc="share of train held out (stratified) to choose the best epoch",
                           valid=_FRACTION)
    early_stopping: int = key(0, log=TRAINING, doc="stop after this many epochs without a better val_acc; 0: off",
                              valid=_at_least(0, " (0 turns it off)"))
    progressive_epochs: int = key(0, log=TRAINING, valid=_at_least(0, " (0 turns it off)"),
                                  doc="train the first epochs at progressive_size (progressive resizing); 0: off")
    progressive_size: int = key(24, log=TRAINING, valid=(lambda v: 8 <= v <= 1024, "an integer in [8, 1024]"),
                                doc="progressive_epochs: the image size of the early epochs")
    tta: bool = key(False, log=TRAINING, doc="final test score averaged over mirrored and shifted views")
    tta_share: float = key(1.0, log=TRAINING, valid=(lambda v: 0 < v <= 1, "a number in (0, 1]"),
                           doc="tta: the share of test images, the least confident, that get the 6 views "
                               "(with budget=, as many of them as the time left allows: metric tta_share_used)")
    # transfer learning (transfer.py)
    init_from: Optional[str] = key(log=TRAINING, doc="start from this run's best checkpoint (log ID, name, run ID)")
    transfer: Transfer = key(Transfer.finetune, log=TRAINING, doc="with init_from: finetune | probe | none")
    body_lr: float = key(1.0, log=TRAINING, valid=_POSITIVE,
                         doc="transfer=finetune: the body's learning rate as a multiple of lr (the head's)")
    # architecture knobs: null means the architecture's own default
    dense_units: Optional[int] = key(log=ARCHITECTURE, doc="hidden dense units; 0 removes the hidden dense layer",
                                     valid=_at_least(0, " (0 removes the hidden dense layer)"))
    dropout: Optional[float] = key(log=ARCHITECTURE, doc="dropout before the classifier", valid=_FRACTION)
    batch_norm: Optional[bool] = key(log=ARCHITECTURE, doc="batch norm after each convolution")
    pool: Optional[Pool] = key(log=ARCHITECTURE, doc="max | avg | min pooling")
    activation: Optional[Activation] = key(log=ARCHITECTURE, doc="relu, gelu, silu, ... (the Activation enum)")
    width: Optional[float] = key(log=ARCHITECTURE, doc="channel multiplier", valid=_POSITIVE)
    depth: Optional[int] = key(log=ARCHITECTURE, doc="blocks or layers, as the architecture counts them",
                               valid=_at_least(1))
    eval: EvalConfig = key(log=COLUMN, factory=EvalConfig, doc="the final test and the target sets (eval.*)")
    tracking: TrackingConfig = key(log=BOOKKEEPING, identity=False, factory=TrackingConfig,
                                   doc="where the record is kept (tracking.*)")


def keys(cls=Config, prefix: str = ""):
    """(dotted name, field) of every config key: the leaves, `data.name` rather than `data`; `arch` is one."""
    for f in fields(cls):
        if is_dataclass(f.default_factory):
            yield from keys(f.default_factory, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def keys_in(log: str) -> tuple:
    """The config keys whose changes show in the log's `log` column (LOG_COLUMNS)."""
    return tuple(name for name, f in keys() if f.metadata.get("log") == log)


def unclassified(cls=Config) -> list:
    """The config keys that do not say which log column they belong to or what they mean (tests/test_schema.py)."""
    return [name for name, f in keys(cls) if f.metadata.get("log") not in LOG_COLUMNS or not f.metadata.get("doc")]


# the architecture knobs: top-level keys an architecture's builder may take (see models/__init__.py)
KNOBS = tuple(name for name in keys_in(ARCHITECTURE) if name != "arch")

# config keys that do not change what a run computes: left out of a trial's identity
NOT_IN_KEY = tuple(f.name for f in fields(Config) if not f.metadata.get("identity", True))

# key -> (is the value valid?, what is valid)
RANGES = {name: f.metadata["valid"] for name, f in keys() if f.metadata.get("valid") is not None}


def knob_table() -> str:
    """The README's table of config keys, as markdown: key, default, log column, meaning."""
    rows = ["| key | default | in the log | meaning |", "|---|---|---|---|"]
    for name, f in keys():
        default = f.default if f.default is not MISSING else f.default_factory()
        default = default.value if isinstance(default, Enum) else default
        shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        doc = f.metadata["doc"].replace("|", "\\|")
        rows.append(f"| `{name}` | `{shown}` | {f.metadata['log']} | {doc} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m cnnlab.schema: the README's knob table
    print(knob_table())
