"""Data: CIFAR-10 decoded once into a uint8 cache, held in memory as tensors, served in batches.

- `import_dataset(path)` reads an image folder (directory, .tar, .tar.gz, .zip laid out
  `train/<class>/*`, `test/<class>/*`) or the official `cifar-10-python.tar.gz`, and writes
  `<root>/cifar10.npz` atomically: a bad input never replaces a good cache.
- `load(cfg.data)` returns the cached set (downloading it first with torchvision where
  allowed), or a generated synthetic set for tests and quick checks.
- `split()` carves a seeded, stratified validation split (and train fraction) out of train.
- `Batches` serves shuffled batches from device-resident tensors, with crop+flip augmentation
  and normalisation done on the whole batch: no per-image Python.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import tarfile
import tempfile
import zlib
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from .errors import CnnlabError
from .files import umask_mode

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CACHE_NAME = "cifar10.npz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
_FOLDER_IMAGE = re.compile(r"(?:^|/)(train|test)/([^/]+)/[^/]+$")
_CIFAR_BATCH = re.compile(r"(?:^|/)(data_batch_[1-5]|test_batch|batches\.meta)$")
IMPORT_HELP = (
    "Give an image folder (a directory, .tar, .tar.gz or .zip with train/<class>/* and "
    "test/<class>/*) or the official cifar-10-python.tar.gz."
)


def data_root(root: Optional[str] = None) -> Path:
    """Where the cache lives: `root`, else $CNNLAB_DATA_DIR, else ~/.cache/cnnlab."""
    path = root or os.environ.get("CNNLAB_DATA_DIR") or Path.home() / ".cache" / "cnnlab"
    return Path(path).expanduser().resolve()


@dataclass
class Dataset:
    """A whole dataset in memory: images uint8 (N, 3, H, W), labels int64 (N,)."""

    x_train: "torch.Tensor"
    y_train: "torch.Tensor"
    x_test: "torch.Tensor"
    y_test: "torch.Tensor"
    classes: Tuple[str, ...]
    mean: Tuple[float, ...]  # per channel, on the 0-1 scale, over the training images
    std: Tuple[float, ...]
    name: str = "cifar10"

    def to(self, device) -> "Dataset":
        """The same data set with its tensors on `device` (sweep workers keep it on their GPU)."""
        from dataclasses import replace

        return replace(self, **{k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")})


# ---------------------------------------------------------------- reading an input


MAX_MEMBER_BYTES = 64 << 20  # the largest file read from an input (an official CIFAR batch is 31 MB)
MAX_IMAGE_SIDE = 1024  # pixels: CIFAR is 32, STL-10 96; a larger image is refused before it is decoded
MAX_DECODED_BYTES = 2 << 30  # all decoded images together, checked from their headers before decoding
SHRINK_FORCE = 0.5  # an import with fewer images than this share of the cache's needs --force


def _unsafe(name: str) -> Optional[str]:
    """Why an archive member's name is not taken (None: it is safe)."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "'..' in its path"
    return None


def _bounded(name: str, declared: int, read) -> bytes:
    """A member's bytes, read at most MAX_MEMBER_BYTES + 1 at a time: a member that declares (or turns out to
    hold) more is refused before it fills the memory."""
    if declared > MAX_MEMBER_BYTES:
        raise CnnlabError(f"{name} declares {declared:,} bytes, over the {MAX_MEMBER_BYTES:,} any file of a "
                          "CIFAR-10 copy needs: the input is corrupt or a decompression bomb. Nothing was imported.")
    data = read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise CnnlabError(f"{name} holds more than the {MAX_MEMBER_BYTES:,} bytes any file of a CIFAR-10 copy "
                          "needs (it declared fewer): the input is corrupt or a decompression bomb. Nothing was "
                          "imported.")
    return data


def _members(path: Path, skipped: List[str]) -> Iterator[Tuple[str, bytes]]:
    """(relative posix path, bytes) of every regular file in a directory, tar(.gz) or zip, each read with a
    bound. Links, FIFOs, devices and names that would leave the folder are not read: each is added to
    `skipped` as 'name (why)'."""
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            name = file.relative_to(path).as_posix()
            if file.is_dir() and not file.is_symlink():
                continue
            if file.is_symlink() or not file.is_file():
                skipped.append(f"{name} (not a regular file)")
                continue
            with open(file, "rb") as f:
                yield name, _bounded(f"{path}: {name}", file.stat().st_size, f.read)
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                if why := _unsafe(info.filename):
                    skipped.append(f"{info.filename} ({why})")
                    continue
                if (info.external_attr >> 16) & 0o170000 not in (0, 0o100000):  # a symlink or FIFO from Unix
                    skipped.append(f"{info.filename} (not a regular file)")
                    continue
                with archive.open(info) as f:
                    yield info.filename, _bounded(f"{path}: {info.filename}", info.file_size, f.read)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if member.isdir():
                    continue
                why = _unsafe(member.name) or (None if member.isfile() else "not a regular file")
                if why:
                    skipped.append(f"{member.name} ({why})")
                    continue
                yield member.name, _bounded(f"{path}: {member.name}", member.size,
                                              archive.extractfile(member).read)
    else:
        with open(path, "rb") as f:
            magic = f.read(4)
        kind = {b"PK\x03\x04": "zip", b"\x1f\x8b\x08\x00": "gzip"}.get(magic) or \
            ("gzip" if magic[:2] == b"\x1f\x8b" else None)
        if kind:
            raise CnnlabError(f"{path} is a {kind} file that cannot be read to its end: it is truncated or corrupt. "
                              f"Download or copy it again. {IMPORT_HELP}")
        raise CnnlabError(f"{path} is neither a directory nor a .tar, .tar.gz or .zip archive. {IMPORT_HELP}")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles the official CIFAR batches (dicts of numpy arrays and lists) and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")
        return super().find_class(module, name)


def _decode_image(data: bytes, name: str, budget: dict):
    """The image as uint8 C x H x W. Its header is read first: an image larger than MAX_IMAGE_SIDE, of another
    size than the images before it, or past the decoded-bytes budget is refused before it is decoded."""
    import numpy as np
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
    except Exception as exc:  # PIL raises many types for bad bytes
        raise CnnlabError(f"{name} is not a readable image ({exc}).") from None
    with image:
        width, height = image.size
        if max(width, height) > MAX_IMAGE_SIDE:
            raise CnnlabError(f"{name} is {width}x{height} pixels, over the {MAX_IMAGE_SIDE} a side cnnlab imports "
                              "(CIFAR-10 is 32x32): it was not decoded, and nothing was imported.")
        size = budget.setdefault("size", (width, height))
        if size != (width, height):
            raise CnnlabError(f"{name}: images differ in size ({width}x{height} here, {size[0]}x{size[1]} before "
                              "it); all must have the same height and width.")
        budget["bytes"] = budget.get("bytes", 0) + 3 * width * height
        if budget["bytes"] > MAX_DECODED_BYTES:
            raise CnnlabError(f"{name}: the images decode to more than {MAX_DECODED_BYTES >> 30} GiB in all, more "
                              "than cnnlab holds in memory; import fewer or smaller images.")
        try:
            return np.asarray(image.convert("RGB")).transpose(2, 0, 1)
        except Exception as exc:
            raise CnnlabError(f"{name} is not a readable image ({exc}).") from None


def _read(path: Path, skipped: List[str]):
    """Images and labels of `path`: ((x_train, y_train), (x_test, y_test), classes). Members not read are named
    in `skipped`."""
    import numpy as np

    folder = {"train": [], "test": []}  # (class name, file name, image)
    batches = {}
    budget: dict = {}
    for name, data in _members(path, skipped):
        if _CIFAR_BATCH.search(name):
            try:
                batches[_CIFAR_BATCH.search(name).group(1)] = _CifarUnpickler(
                    io.BytesIO(data), encoding="latin1").load()
            except Exception as exc:
                raise CnnlabError(f"{path}: {name} is not a readable CIFAR batch ({exc}).") from None
        elif (m := _FOLDER_IMAGE.search(name)) and name.lower().endswith(IMAGE_SUFFIXES):
            folder[m.group(1)].append((m.group(2), name, _decode_image(data, f"{path}: {name}", budget)))

    if batches:
        missing = [b for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if b not in batches]
        if missing:
            raise CnnlabError(f"{path} looks like cifar-10-python.tar.gz but lacks {', '.join(missing)}: "
                              "the archive is incomplete.")
        meta = batches.get("batches.meta", {})
        classes = tuple(meta.get("label_names", CIFAR10_CLASSES))

        def stack(names):
            x = np.concatenate([np.asarray(batches[b]["data"], dtype=np.uint8) for b in names])
            y = np.concatenate([np.asarray(batches[b]["labels"], dtype=np.int64) for b in names])
            return x.reshape(-1, 3, 32, 32), y

        return stack([f"data_batch_{i}" for i in range(1, 6)]), stack(["test_batch"]), classes

    if not folder["train"] or not folder["test"]:
        raise CnnlabError(f"Found no {'train' if not folder['train'] else 'test'} images in {path}. {IMPORT_HELP}")
    classes = tuple(sorted({c for c, _, _ in folder["train"]}))
    extra = {c for c, _, _ in folder["test"]} - set(classes)
    if extra:
        raise CnnlabError(f"{path}: test/ has classes that train/ lacks: {', '.join(sorted(extra))}.")
    index = {c: i for i, c in enumerate(classes)}

    def stack(items):  # in (class, file name) order, whatever order the archive had
        items = sorted(items, key=lambda item: (index[item[0]], item[1]))
        return (np.stack([img for _, _, img in items]).astype(np.uint8),
                np.array([index[c] for c, _, _ in items], dtype=np.int64))

    return stack(folder["train"]), stack(folder["test"]), classes


def _channel_stats(x) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    import numpy as np

    mean = np.zeros(3)
    sq = np.zeros(3)
    for i in range(0, len(x), 5000):  # chunked: no float copy of the whole set
        chunk = x[i:i + 5000].astype(np.float64) / 255
        mean += chunk.sum(axis=(0, 2, 3))
        sq += (chunk ** 2).sum(axis=(0, 2, 3))
    n = len(x) * x.shape[2] * x.shape[3]
    mean /= n
    std = np.sqrt(sq / n - mean ** 2)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _sha256(path: Path) -> str:
    if path.is_dir():
        return ""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _clean_temporaries(directory: Path) -> None:
    """Remove the half-written caches of imports that were killed (their process is gone)."""
    for tmp in directory.glob(".cifar10-*.npz"):
        try:
            pid = int(tmp.name.split("-")[1])
        except (IndexError, ValueError):
            pid = None
        if pid is None or not Path(f"/proc/{pid}").exists() or pid == os.getpid():
            tmp.unlink(missing_ok=True)


def skipped_text(skipped: List[str]) -> str:
    shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
    return f"{len(skipped)} member(s) were not read: {shown}."


def _check_replaces(old: Optional[dict], path: Path, classes, images: int, skipped: List[str]) -> None:
    """Refuse (unless --force) an import that would replace the cache with other classes or far fewer images."""
    if old is None:
        return
    if list(old["classes"]) != list(classes):
        gone = sorted(set(old["classes"]) - set(classes))
        extra = sorted(set(classes) - set(old["classes"]))
        what = "; ".join(p for p in (f"missing {', '.join(gone)}" if gone else "", f"new {', '.join(extra)}"
                                     if extra else "") if p) or "a different order"
        raise CnnlabError(f"{path} has {len(classes)} classes where the cache has {len(old['classes'])} ({what}): "
                          f"importing it would replace the cache every run trains on. Check the copy, or pass "
                          f"--force to replace the cache anyway. The cache is unchanged.")
    cached = old["train"] + old["test"]
    if images < SHRINK_FORCE * cached:
        why = f" {skipped_text(skipped)}" if skipped else ""
        raise CnnlabError(f"{path} holds {images:,} images where the cache holds {cached:,}: importing it would "
                          f"replace the cache every run trains on with far fewer images.{why} Check the copy, or "
                          "pass --force to replace the cache anyway. The cache is unchanged.")


def import_dataset(path, root: Optional[str] = None, force: bool = False) -> dict:
    """Decode `path` into the cache; returns the cache's info ("skipped": the members not read, 'name (why)').
    The old cache survives any failure, and a copy with other classes or far fewer images than the cache's
    replaces it only with `force`."""
    import numpy as np

    path = Path(path).expanduser()
    if not path.exists():
        raise CnnlabError(f"{path} does not exist. {IMPORT_HELP}")
    cache = data_root(root) / CACHE_NAME
    if cache.parent.is_dir():
        _clean_temporaries(cache.parent)
    start = time.perf_counter()
    skipped: List[str] = []
    try:
        (x_train, y_train), (x_test, y_test), classes = _read(path, skipped)
    except CnnlabError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise CnnlabError(f"Could not read {path}: it is corrupt or truncated ({type(exc).__name__}: {exc}). "
                          f"{IMPORT_HELP} Any earlier cache is left as it was.") from None
    try:
        old = cache_info(root)
    except CnnlabError:  # an unreadable cache: this import is how to replace it
        old = None
    if not force:
        _check_replaces(old, path, classes, len(y_train) + len(y_test), skipped)
    mean, std = _channel_stats(x_train)
    meta = {
        "source": str(path.resolve()), "sha256": _sha256(path), "imported": time.strftime("%Y-%m-%d %H:%M:%S"),
        "classes": list(classes), "mean": mean, "std": std,
        "train": int(len(y_train)), "test": int(len(y_test)), "image_shape": list(x_train.shape[1:]),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=f".cifar10-{os.getpid()}-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, meta=json.dumps(meta))
        os.chmod(tmp, umask_mode())
        os.replace(tmp, cache)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {**meta, "cache": str(cache), "seconds": round(time.perf_counter() - start, 1), "skipped": skipped}


def cache_info(root: Optional[str] = None) -> Optional[dict]:
    """The cache's metadata, or None when there is none."""
    cache = data_root(root) / CACHE_NAME
    if not cache.exists():
        return None
    with _open_cache(cache) as archive:
        meta = json.loads(str(archive["meta"]))
    return {**meta, "cache": str(cache), "bytes": cache.stat().st_size}


def _open_cache(cache: Path):
    """The cache's npz archive; an unreadable one is a clear error that says how to make it again."""
    import numpy as np

    try:
        archive = np.load(cache)
        archive["meta"]  # noqa: B018 (read now: a garbage file fails here, not mid-run)
        return archive
    except Exception as exc:  # numpy raises many types for a bad file
        raise CnnlabError(f"The data cache {cache} is unreadable ({type(exc).__name__}: {exc}): it is corrupt or not "
                          f"a cnnlab cache. Import the data again (`cnnlab data import PATH`), or delete it so that "
                          "`cnnlab train` downloads CIFAR-10 again.") from None


# ---------------------------------------------------------------- loading


def _download(cfg_data, root: Path) -> None:
    """Fetch the official archive with torchvision's downloader (checksum verified), then import it."""
    from torchvision.datasets.utils import download_url

    filename = "cifar-10-python.tar.gz"
    try:
        download_url(cfg_data.url, str(root), filename, md5=cfg_data.md5)
    except Exception as exc:  # urllib, socket and checksum errors all land here
        raise CnnlabError(
            f"CIFAR-10 is not in the cache ({root / CACHE_NAME}) and could not be downloaded from "
            f"{cfg_data.url} ({type(exc).__name__}: {exc}). If this machine is offline, copy the data "
            f"here and run `cnnlab data import PATH`. {IMPORT_HELP}"
        ) from None
    archive = root / filename
    import_dataset(archive, str(root))
    archive.unlink()


def load(cfg_data, seed: int = 0) -> Dataset:
    """The dataset `cfg_data` names, as uint8 tensors in memory."""
    if cfg_data.name == "synthetic":
        return synthetic(cfg_data.n_train or 2000, cfg_data.n_test or 500, seed=seed)
    if cfg_data.name != "cifar10":
        return _target(cfg_data)
    import torch

    root = data_root(cfg_data.root)
    cache = root / CACHE_NAME
    if not cache.exists():
        if not cfg_data.download:
            raise CnnlabError(f"CIFAR-10 is not in the cache ({cache}) and data.download=false. "
                              f"Run `cnnlab data import PATH`. {IMPORT_HELP}")
        _download(cfg_data, root)
    with _open_cache(cache) as archive:
        try:
            meta = json.loads(str(archive["meta"]))
            arrays = {k: torch.from_numpy(archive[k]) for k in ("x_train", "y_train", "x_test", "y_test")}
        except Exception as exc:
            raise CnnlabError(f"The data cache {cache} is damaged ({type(exc).__name__}: {exc}). Import the data again "
                              "(`cnnlab data import PATH`).") from None
    return Dataset(**arrays, classes=tuple(meta["classes"]), mean=tuple(meta["mean"]), std=tuple(meta["std"]))


# ---------------------------------------------------------------- target datasets' cache (target_data.py fills it)


@dataclass
class Target:
    """A cached target dataset (<data root>/targets/<name>/: meta.json, one .npy per array): its classes and its
    arrays, read on demand (memory-mapped)."""

    name: str
    directory: Path
    classes: Tuple[str, ...]
    arrays: List[str]

    def array(self, name: str):
        import numpy as np
        import torch

        return torch.from_numpy(np.load(self.directory / f"{name}.npy", mmap_mode="r").copy())

    def split(self, split: str = "test"):
        """(images, labels) of a split."""
        if f"{split}_x" not in self.arrays:
            raise CnnlabError(f"Target {self.name} has no {split} split (it has: "
                              f"{', '.join(sorted({a.rsplit('_', 1)[0] for a in self.arrays}))}).")
        return self.array(f"{split}_x"), self.array(f"{split}_y")


def cache_dir(root: Path, name: str) -> Path:
    return root / "targets" / name


def cached(root: Path, name: str) -> Optional[Target]:
    directory = cache_dir(root, name)
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return Target(name, directory, tuple(meta["classes"]), list(meta["arrays"]))


def present(root: Path) -> List[str]:
    """The targets in the cache."""
    base = root / "targets"
    return sorted(p.name for p in base.iterdir() if cached(root, p.name)) if base.is_dir() else []


def _target(cfg_data) -> Dataset:
    """A target dataset of the cache (STL-10, SVHN, an imported folder) as training data: its train and test splits
    (the training split's channel statistics), to train on from scratch or from a source run."""
    root = data_root(cfg_data.root)
    target = cached(root, cfg_data.name)
    if target is None:
        raise CnnlabError(f"Unknown data set {cfg_data.name!r}: not cifar10 or synthetic, and no target of that name "
                          f"is in the cache ({', '.join(present(root)) or 'none is'}). Get an official one online "
                          f"with `cnnlab data download {cfg_data.name}` (stl10, svhn), or import files: `cnnlab data "
                          f"import --target {cfg_data.name} PATH`.")
    x_train, y_train = target.split("train")
    x_test, y_test = target.split("test")
    mean, std = _channel_stats(x_train.numpy())
    return Dataset(x_train, y_train, x_test, y_test, classes=target.classes, mean=mean, std=std,
                   name=cfg_data.name)


def synthetic(n_train: int = 2000, n_test: int = 500, num_classes: int = 10, size: int = 32,
              seed: int = 0) -> Dataset:
    """A learnable stand-in for CIFAR-10: each class is a smooth random colour pattern, shifted, blended 40% with
    another class's pattern and noised.

    The same seed gives the same images. Small models reach well above chance in one or two epochs, but not 100%
    in a few: configurations differ on it (tf_cnn about 0.75 after 4 epochs of 2,000 images, lenet5 about 0.5), so
    a sweep on it ranks something.
    """
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(1234 + seed)
    prototypes = F.interpolate(torch.rand(num_classes, 3, 4, 4, generator=g), size=size + 8,
                               mode="bilinear", align_corners=False)

    def make(n):
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        other = torch.randint(0, num_classes, (n,), generator=g)  # the pattern each image is blended with
        dx, dy = torch.randint(0, 9, (2, n), generator=g)
        rows = dy[:, None] + torch.arange(size)
        cols = dx[:, None] + torch.arange(size)
        pattern = lambda label: prototypes[label[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # noqa: E731
        x = (0.6 * pattern(y) + 0.4 * pattern(other)).permute(0, 3, 1, 2)
        x = x + 0.5 * torch.randn(x.shape, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    mean, std = _channel_stats(x_train.numpy())
    return Dataset(x_train, y_train, x_test, y_test, tuple(f"class{i}" for i in range(num_classes)),
                   mean, std, name="synthetic")


# ---------------------------------------------------------------- splitting


def stratified_split(y, fraction: float, seed: int):
    """Indices (taken, rest): `fraction` of each class taken, chosen by `seed`."""
    import torch

    g = torch.Generator().manual_seed(seed)
    taken, rest = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g).to(idx.device)]
        k = int(round(fraction * len(idx)))
        taken.append(idx[:k])
        rest.append(idx[k:])
    return torch.cat(taken).sort().values, torch.cat(rest).sort().values


@dataclass
class Splits:
    x_train: "torch.Tensor"
    y_train: "torch.Tensor"
    x_val: "torch.Tensor"
    y_val: "torch.Tensor"
    x_test: "torch.Tensor"
    y_test: "torch.Tensor"


def split(ds: Dataset, val_split: float, train_fraction: float = 1.0, seed: int = 0) -> Splits:
    """Validation split (stratified, seeded) out of train; then a stratified fraction of the rest."""
    val_idx, train_idx = stratified_split(ds.y_train, val_split, seed)
    if len(train_idx) == 0:
        raise CnnlabError(f"val_split={val_split} takes every training image of {len(ds.y_train):,} for validation, "
                          "leaving none to train on: choose a smaller val_split (0.1 is usual).")
    if train_fraction < 1:
        keep, _ = stratified_split(ds.y_train[train_idx], train_fraction, seed + 1)
        train_idx = train_idx[keep]
    if len(train_idx) == 0:
        raise CnnlabError(f"data.train_fraction={train_fraction} leaves no training images.")
    return Splits(ds.x_train[train_idx], ds.y_train[train_idx], ds.x_train[val_idx], ds.y_train[val_idx],
                  ds.x_test, ds.y_test)


# ---------------------------------------------------------------- batches


def crop_views(x, pad: int, fill: str = "zeros"):
    """Every crop of the uint8 images `x` (N, C, H, W) padded by `pad` (zeros, or reflect: the image mirrored at its
    edges), and of their mirror images, as one strided view indexed [image + N * mirrored, dy, dx] -> (H, W, C): a
    batch of random crops is then one gather instead of a per-pixel index computation (5x faster on the CPU). The
    memory is channels-last, as the models read their input: the gather's rows are then whole image rows."""
    import torch
    import torch.nn.functional as F

    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect" if fill == "reflect" and pad else "constant")
    padded = torch.cat([padded, padded.flip(-1)]).permute(0, 2, 3, 1).contiguous()  # N H W C
    n, h, w, c = padded.shape
    sn, sh, sw, sc = padded.stride()
    return padded.as_strided((n, 2 * pad + 1, 2 * pad + 1, h - 2 * pad, w - 2 * pad, c), (sn, sh, sw, sh, sw, sc))


def random_crop_flip(crops, idx, dy, dx, flip):
    """Images `idx` shifted by (dy, dx) of up to 2 * pad (filled as crop_views padded) and mirrored where `flip`, per
    image, from crop_views(x, pad): dy, dx and flip are tensors of len(idx) on the crops' device. (N, C, H, W) in
    channels-last memory."""
    import torch

    pad = (crops.shape[1] - 1) // 2
    # the crop at dx of a mirror image is the mirror of the crop at 2 * pad - dx of the original
    images, dx = idx + len(crops) // 2 * flip, torch.where(flip, 2 * pad - dx, dx)
    if crops.device.type not in ("cpu", "cuda"):  # (Apple's MPS may copy the overlapping view below whole)
        return crops[images, dy, dx].permute(0, 3, 1, 2)
    # Each crop is h rows of w * c contiguous values: the rows are copied by one index_select from a view whose row
    # p is the w * c values at offset p of the padded images (4x faster than indexing crops, the same values).
    sn, sdy, sdx, sh = crops.stride()[:4]
    h, w, c = crops.shape[3:]
    row = w * c
    starts = crops.storage_offset() + images * sn + dy * sdy + dx * sdx
    rows = torch.as_strided(crops, (crops.untyped_storage().nbytes() // crops.element_size() - row + 1, row), (1, 1), 0)
    offsets = (starts[:, None] + torch.arange(h, device=crops.device) * sh).view(-1)
    return rows.index_select(0, offsets).view(len(idx), h, w, c).permute(0, 3, 1, 2)


class Batches:
    """Batches of (normalised float images, labels) from uint8 tensors already on `device`.

    An epoch's random choices (the order, each image's shift and mirroring) are drawn at its start, all at once, on
    the data's device from a generator there, seeded: no per-batch copy from the host, and each image's
    augmentation is the same whatever the batch size."""

    def __init__(self, x, y, batch_size: int, *, mean, std, shuffle: bool = False, augment: bool = False,
                 translate: int = 4, fill: str = "zeros", flip: str = "random", image_size: int = 32,
                 channels_last: bool = False, drop_last: bool = False, seed: int = 0, early: Tuple[int, int] = (0, 0),
                 jitter: Tuple[float, float] = (0.0, 0.0)):
        import torch

        self.x, self.y = x, y
        self.jitter = jitter  # (brightness, contrast): per image, x -> (x + U(-b, b)) * (1 + U(-c, c)), normalised
        self.batch_size, self.shuffle, self.augment, self.drop_last = batch_size, shuffle, augment, drop_last
        self.translate, self.flip = translate, flip
        self.image_size = image_size
        self.early = early  # (epochs, size): progressive resizing's first epochs at a lower size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = torch.tensor(mean, device=x.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=x.device).view(1, -1, 1, 1) * 255
        pixels = x.shape[-2] * x.shape[-1]  # the per-channel values repeated for each pixel of channels-last rows
        self.row_mean, self.row_std = self.mean.view(-1).repeat(pixels), self.std.view(-1).repeat(pixels)
        self.generator = torch.Generator(x.device).manual_seed(seed)
        self.epoch = 0
        # alternating flips: a random first choice per image, then the opposite every other epoch
        self.flip_first = torch.rand(len(y), generator=self.generator, device=x.device) < 0.5
        self.crops = crop_views(x, translate, fill) if augment else None

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def state_dict(self) -> dict:
        """Where the batches stand (the random stream and the epoch), to continue exactly where they were."""
        return {"generator": self.generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch = state["epoch"]

    def draws(self, epoch: int):
        """(order or None, shifts (2, n) or None, flips (n,) or None, colour (2, n, 1, 1, 1) or None): an epoch's
        random choices, per image; colour: each image's brightness shift and contrast scale (`jitter`)."""
        import torch

        n, device, g = len(self.y), self.x.device, self.generator
        order = torch.randperm(n, generator=g, device=device) if self.shuffle else None
        if not self.augment:
            return order, None, None, None
        shifts = torch.randint(0, 2 * self.translate + 1, (2, n), generator=g, device=device)
        if self.flip == "alternating":
            flips = self.flip_first ^ bool(epoch % 2)
        elif self.flip == "none":
            flips = torch.zeros(n, dtype=torch.bool, device=device)
        else:
            flips = torch.rand(n, generator=g, device=device) < 0.5
        colour = None
        if any(self.jitter):  # (drawn only then: a run without it keeps its random stream)
            colour = torch.rand(2, n, 1, 1, 1, generator=g, device=device) * 2 - 1
            colour *= torch.tensor(self.jitter, device=device).view(2, 1, 1, 1, 1)
            colour[1] += 1
        return order, shifts, flips, colour

    def __iter__(self):
        import torch

        n = len(self.y)
        epoch, self.epoch = self.epoch, self.epoch + 1
        order, shifts, flips, colour = self.draws(epoch)
        size = self.early[1] if epoch < self.early[0] else self.image_size
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            idx = order[sl] if order is not None else sl
            yb = self.y[idx]
            if self.augment:
                rows = idx if order is not None else torch.arange(sl.start, sl.stop, device=yb.device)
                xb = random_crop_flip(self.crops, rows, shifts[0, rows], shifts[1, rows], flips[rows])
            else:
                xb = self.x[idx]
            xb = self.normalise(xb)
            if colour is not None:
                xb = (xb + colour[0, rows]) * colour[1, rows]
            yield self._shaped(xb, size), yb

    def take(self, idx):
        """The images at `idx` (a tensor of indices) as a batch the model takes, as evaluation sees them: normalised,
        at image_size, in the batches' memory format (TTA scores its chosen images so)."""
        return self._shaped(self.normalise(self.x[idx]), self.image_size)

    def _shaped(self, xb, size: int):
        import torch.nn.functional as F

        if size != xb.shape[-1]:
            xb = F.interpolate(xb, size=size, mode="bilinear", align_corners=False, antialias=True)
        return xb.contiguous(memory_format=self.memory_format)

    def normalise(self, xb):
        """(xb - mean) / std per channel, in float32. A batch in channels-last memory is taken as rows of
        (H x W x C) values against the means and deviations repeated per pixel: the same values as broadcasting over
        the channels, which sit innermost there, 3.8x faster (that broadcast is not vectorised)."""
        import torch

        n, c, h, w = xb.shape
        if xb.is_contiguous(memory_format=torch.channels_last) and len(self.row_mean) == h * w * c:
            rows = xb.permute(0, 2, 3, 1).reshape(n, -1).float()
            return rows.sub_(self.row_mean).div_(self.row_std).view(n, h, w, c).permute(0, 3, 1, 2)
        return (xb.float() - self.mean) / self.std


@dataclass
class Loaders:
    """The batches one training run reads, all on its device."""

    train: Batches
    val: Batches
    test: Batches
    sample: Batches  # up to 5,000 training images in one batch, for layers set from data (the `prepare` hook)
    sizes: dict  # split.train / split.val / split.test: images in each
    eval_batch_size: int
    channels_last: bool


def loaders(ds: Dataset, cfg, device) -> Loaders:
    """Split `ds` as `cfg` says and serve its parts from `device` (channels_last except on Apple's MPS)."""
    splits = split(ds, cfg.val_split, cfg.data.train_fraction, cfg.seed)
    channels_last = device.type != "mps"
    to_dev = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    common = dict(mean=ds.mean, std=ds.std, image_size=cfg.image_size, channels_last=channels_last)
    train = Batches(to_dev(splits.x_train), to_dev(splits.y_train), cfg.batch_size, shuffle=True,
                    augment=cfg.augment, translate=cfg.translate, fill=cfg.translate_fill.value, flip=cfg.flip.value,
                    drop_last=len(splits.y_train) > cfg.batch_size, seed=cfg.seed,
                    early=(cfg.progressive_epochs, cfg.progressive_size),
                    jitter=(cfg.brightness, cfg.contrast), **common)
    eval_size = max(cfg.batch_size, 500)
    return Loaders(
        train=train,
        val=Batches(to_dev(splits.x_val), to_dev(splits.y_val), eval_size, **common),
        test=Batches(to_dev(splits.x_test), to_dev(splits.y_test), eval_size, **common),
        sample=Batches(train.x[:5000], train.y[:5000], 5000, **common),
        sizes={"split.train": len(splits.y_train), "split.val": len(splits.y_val), "split.test": len(splits.y_test)},
        eval_batch_size=eval_size, channels_last=channels_last)
