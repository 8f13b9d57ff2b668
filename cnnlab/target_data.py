"""Real target datasets (the course log's Target group): read from their official distribution formats, cached
as cnnlab caches CIFAR-10, downloaded with their checksums when online.

- cifar10_1: CIFAR-10.1 v6 (Recht et al. 2018), cifar10.1_v6_data.npy + cifar10.1_v6_labels.npy: 2,000 new test
  images of CIFAR-10's classes.
- cifar10_c: CIFAR-10-C (Hendrycks & Dietterich 2019), CIFAR-10-C.tar: the test set under 19 corruptions at 5
  severities, one <corruption>.npy (50,000 x 32 x 32 x 3, severity 1 first) each, and labels.npy.
- stl10: STL-10 (Coates et al. 2011), stl10_binary.tar.gz: 96x96 images of 10 classes, 9 of them CIFAR-10's.
- svhn: SVHN cropped digits (Netzer et al. 2011), train_32x32.mat and test_32x32.mat: other classes entirely.
- any other name: an image folder laid out <split>/<class>/* (`cnnlab data import --target NAME PATH`).

The cache is <data root>/targets/<name>/: meta.json and one .npy per array (images N x 3 x H x W uint8, labels
int64), written to a temporary directory and renamed into place, so a failed import leaves the old cache whole.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from .data import CIFAR10_CLASSES, Target, cache_dir, cached, data_root, present  # noqa: F401 (the cache's)
from .errors import CnnlabError

CIFAR10_C = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "glass_blur",
             "motion_blur", "zoom_blur", "gaussian_blur", "snow", "frost", "fog", "spatter", "brightness", "contrast",
             "saturate", "elastic_transform", "pixelate", "jpeg_compression")
SEVERITIES = 5
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
MAX_MEMBER = 400 << 20  # the largest file read from an input (STL-10's test_X.bin is 221 MB)


@dataclass(frozen=True)
class Official:
    """A target's official files: name -> (URL, MD5 or None where no checksum is published)."""

    files: Dict[str, Tuple[str, Optional[str]]]
    about: str


OFFICIAL = {
    "cifar10_1": Official({
        "cifar10.1_v6_data.npy": ("https://github.com/modestyachts/CIFAR-10.1/raw/master/datasets/"
                                  "cifar10.1_v6_data.npy", None),
        "cifar10.1_v6_labels.npy": ("https://github.com/modestyachts/CIFAR-10.1/raw/master/datasets/"
                                    "cifar10.1_v6_labels.npy", None)},
        "CIFAR-10.1 v6: 2,000 new test images of CIFAR-10's classes"),
    "cifar10_c": Official({
        "CIFAR-10-C.tar": ("https://zenodo.org/records/2535967/files/CIFAR-10-C.tar",
                           "56bf5dcef84df0e2308c6dcbcbbd8499")},
        "CIFAR-10-C: the test set under 19 corruptions x 5 severities"),
    "stl10": Official({
        "stl10_binary.tar.gz": ("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                                "91f7769df0f17e558f3565bffb0c7dfb")},
        "STL-10: 96x96 images, 9 of CIFAR-10's 10 classes"),
    "svhn": Official({
        "train_32x32.mat": ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                            "e26dedcc434d2e4c54c9b2d4a06d8373"),
        "test_32x32.mat": ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                           "eb5a983be6a315427106f1b164d9cef3")},
        "SVHN: house-number digits 0-9, no class of CIFAR-10's"),
}


def load(root: Path, name: str, download: bool = True) -> Target:
    """The cached target `name`, downloaded first when it is an official one and absent."""
    found = cached(root, name)
    if found is not None:
        return found
    if name in OFFICIAL and download:
        fetch(root, name)
        return cached(root, name)
    how = (f"`cnnlab data import --target {name} PATH` with its official files ({', '.join(OFFICIAL[name].files)})"
           if name in OFFICIAL else f"`cnnlab data import --target {name} FOLDER` (<split>/<class>/* images)")
    raise CnnlabError(f"Target {name!r} is not in the cache ({cache_dir(root, name)}). Import it: {how}.")


def fetch(root: Path, name: str, force: bool = False) -> None:
    """Download an official target's files (their MD5 checked where one is published), then import them."""
    import tempfile

    from torchvision.datasets.utils import download_url

    official = OFFICIAL[name]
    with tempfile.TemporaryDirectory(dir=_made(root)) as tmp:
        for filename, (url, md5) in official.files.items():
            try:
                download_url(url, tmp, filename, md5=md5)
            except Exception as exc:  # urllib, socket and checksum errors all land here
                raise CnnlabError(f"Target {name} is not in the cache and {url} could not be downloaded "
                                  f"({type(exc).__name__}: {exc}). Offline, get {', '.join(official.files)} "
                                  f"elsewhere and run `cnnlab data import --target {name} PATH`.") from None
        import_target(name, Path(tmp), root, force=force)


def _made(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return root


# ---------------------------------------------------------------- importing


def import_target(name: str, path: Path, root: Path, force: bool = False) -> dict:
    """Read `path` in target `name`'s official format (any other name: an image folder) into the cache. An existing
    cache of that target is replaced only with `force`; a failed import leaves it as it was."""
    import tempfile

    from .schema import safe_name

    path = Path(path)
    if not path.exists():
        raise CnnlabError(f"{path} does not exist.")
    if name != safe_name(name) or not name:
        raise CnnlabError(f"Target name {name!r}: use letters, digits, '_', '-' and '.' only.")
    directory = cache_dir(root, name)
    if cached(root, name) is not None and not force:
        raise CnnlabError(f"Target {name} is already in the cache ({directory}); pass --force to replace it.")
    reader = READERS.get(name, _read_folder)
    (root / "targets").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root / "targets", prefix=f".{name}-"))
    try:
        classes, arrays = reader(path, tmp)
        meta = {"name": name, "classes": list(classes), "arrays": arrays, "source": str(path)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if directory.exists():  # (with --force) swapped by renames: no moment without a whole cache of it
        old = Path(tempfile.mkdtemp(dir=root / "targets", prefix=f".{name}-old-"))
        directory.rename(old / name)
        tmp.rename(directory)
        shutil.rmtree(old)
    else:
        tmp.rename(directory)
    return meta


def _npy(data: bytes, what: str):
    import numpy as np

    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a bad file
        raise CnnlabError(f"{what} is not a readable .npy array ({type(exc).__name__}: {exc}).") from None


def _save(out: Path, name: str, array) -> str:
    import numpy as np

    np.save(out / f"{name}.npy", np.ascontiguousarray(array))
    return name


def _images(x, what: str, size: Optional[int] = None, channels_last: bool = True):
    """uint8 images N x H x W x 3 (or N x 3 x H x W) checked and returned as N x 3 x H x W."""
    import numpy as np

    if x.dtype != np.uint8 or x.ndim != 4 or (x.shape[3] if channels_last else x.shape[1]) != 3:
        raise CnnlabError(f"{what}: expected uint8 images N x H x W x 3, got {x.dtype} {tuple(x.shape)}.")
    x = x.transpose(0, 3, 1, 2) if channels_last else x
    if size is not None and x.shape[2:] != (size, size):
        raise CnnlabError(f"{what}: expected {size}x{size} images, got {x.shape[2]}x{x.shape[3]}.")
    return x


def _labels(y, n: int, classes: int, what: str):
    import numpy as np

    y = np.asarray(y).reshape(-1)
    if len(y) != n or y.dtype.kind not in "iu" or (len(y) and (y.min() < 0 or y.max() >= classes)):
        raise CnnlabError(f"{what}: expected {n} integer labels in 0..{classes - 1}, got {len(y)} "
                          f"({y.dtype}{f', {y.min()}..{y.max()}' if len(y) else ''}).")
    return y.astype(np.int64)


def _files(path: Path, wanted: Tuple[str, ...]) -> Iterator[Tuple[str, bytes]]:
    """(name, bytes) of the members of `path` (a directory, a tar archive or one file) named in `wanted`, whatever
    folder they sit in; a member over MAX_MEMBER is refused before it is read."""
    def bounded(name: str, size: int, read) -> bytes:
        if size > MAX_MEMBER:
            raise CnnlabError(f"{path}: {name} is {size:,} bytes, more than any official file ({MAX_MEMBER:,}).")
        return read()

    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.name in wanted and p.is_file():
                yield p.name, bounded(p.name, p.stat().st_size, p.read_bytes)
    elif tarfile.is_tarfile(path):
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted:
                        yield base, bounded(base, member.size, lambda m=member: tar.extractfile(m).read())
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise CnnlabError(f"{path} is a corrupt or truncated archive ({type(exc).__name__}: {exc}).") from None
    elif path.name in wanted:
        yield path.name, bounded(path.name, path.stat().st_size, path.read_bytes)


def _read_cifar10_1(path: Path, out: Path):
    found = dict(_files(path if path.is_dir() else path.parent, ("cifar10.1_v6_data.npy", "cifar10.1_v6_labels.npy")))
    if len(found) < 2:
        raise CnnlabError(f"{path}: CIFAR-10.1 v6 is two files, cifar10.1_v6_data.npy and cifar10.1_v6_labels.npy; "
                          f"found {', '.join(found) or 'neither'}.")
    x = _images(_npy(found["cifar10.1_v6_data.npy"], "cifar10.1_v6_data.npy"), "cifar10.1_v6_data.npy", 32)
    y = _labels(_npy(found["cifar10.1_v6_labels.npy"], "cifar10.1_v6_labels.npy"), len(x), 10,
                "cifar10.1_v6_labels.npy")
    return CIFAR10_CLASSES, [_save(out, "test_x", x), _save(out, "test_y", y)]


def _read_cifar10_c(path: Path, out: Path):
    wanted = tuple(f"{c}.npy" for c in CIFAR10_C) + ("labels.npy",)
    arrays, n = [], None
    for name, data in _files(path, wanted):
        if name == "labels.npy":
            labels = _npy(data, name)
            arrays.append(_save(out, "labels", _labels(labels, len(labels.reshape(-1)), 10, name)))
            continue
        x = _images(_npy(data, name), name, 32)
        if len(x) % SEVERITIES or (n is not None and len(x) != n):
            raise CnnlabError(f"{path}: {name} holds {len(x)} images; each corruption holds the same number, 5 "
                              f"severities of the test set{f' ({n})' if n else ''}.")
        n = len(x)
        arrays.append(_save(out, name[:-4], x))
    missing = [w for w in wanted if w[:-4] not in arrays]
    if missing:
        raise CnnlabError(f"{path} lacks {', '.join(missing)} of CIFAR-10-C's 19 corruptions and labels: the "
                          "archive is incomplete.")
    import numpy as np

    if len(np.load(out / "labels.npy")) != n:
        raise CnnlabError(f"{path}: labels.npy does not hold one label per image of a corruption ({n}).")
    return CIFAR10_CLASSES, arrays


def _read_stl10(path: Path, out: Path):
    import numpy as np

    wanted = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt")
    found = dict(_files(path, wanted))
    if "test_X.bin" not in found or "test_y.bin" not in found:
        raise CnnlabError(f"{path}: STL-10's binary format has test_X.bin and test_y.bin (stl10_binary.tar.gz); "
                          f"found {', '.join(found) or 'neither'}.")
    classes = tuple(found["class_names.txt"].decode().split()) if "class_names.txt" in found else STL10_CLASSES
    arrays = []
    for split in ("train", "test"):
        if f"{split}_X.bin" not in found:
            continue
        raw = np.frombuffer(found[f"{split}_X.bin"], dtype=np.uint8)
        if raw.size % (3 * 96 * 96):
            raise CnnlabError(f"{path}: {split}_X.bin is {raw.size:,} bytes, not a whole number of 3x96x96 images "
                              "(truncated?).")
        x = raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)  # stored column-major
        y = _labels(np.frombuffer(found.get(f"{split}_y.bin", b""), dtype=np.uint8).astype(np.int64) - 1, len(x),
                    len(classes), f"{split}_y.bin")
        arrays += [_save(out, f"{split}_x", x), _save(out, f"{split}_y", y)]
    return classes, arrays


def _read_svhn(path: Path, out: Path):
    import scipy.io

    found = dict(_files(path, ("train_32x32.mat", "test_32x32.mat")))
    if "test_32x32.mat" not in found:
        raise CnnlabError(f"{path}: SVHN's format is train_32x32.mat and test_32x32.mat; found "
                          f"{', '.join(found) or 'neither'}.")
    arrays = []
    for split in ("train", "test"):
        if f"{split}_32x32.mat" not in found:
            continue
        what = f"{split}_32x32.mat"
        try:
            mat = scipy.io.loadmat(io.BytesIO(found[what]))
            x, y = mat["X"], mat["y"]
        except Exception as exc:  # scipy raises several types for a bad file
            raise CnnlabError(f"{path}: {what} is not a readable SVHN .mat file ({type(exc).__name__}: {exc}).") from None
        x = _images(x.transpose(3, 0, 1, 2), what, 32)  # stored 32 x 32 x 3 x N
        y = _labels(y, len(x), 11, what) % 10  # the digit 0 is label 10
        arrays += [_save(out, f"{split}_x", x), _save(out, f"{split}_y", y)]
    return tuple(str(d) for d in range(10)), arrays


def _read_folder(path: Path, out: Path):
    from .data import _read

    skipped: List[str] = []
    (x_train, y_train), (x_test, y_test), classes = _read(path, skipped)
    return classes, [_save(out, "train_x", x_train), _save(out, "train_y", y_train), _save(out, "test_x", x_test),
                     _save(out, "test_y", y_test)]


READERS = {"cifar10_1": _read_cifar10_1, "cifar10_c": _read_cifar10_c, "stl10": _read_stl10, "svhn": _read_svhn}


# ---------------------------------------------------------------- names and classes

SYNONYMS = {"car": "automobile", "plane": "airplane", "aeroplane": "airplane"}  # STL-10's car is CIFAR's automobile


def check_names(names: List[str], root: Optional[str] = None, data: str = "cifar10") -> None:
    """Refuse target set names that are neither corruptions, official targets nor imported ones, and a target
    that shares no class with the data a model is trained on."""
    from . import corruptions

    unknown = [n for n in names if n not in corruptions.SEVERITIES and n not in OFFICIAL]
    imported = present(data_root(root)) if unknown else []
    unknown = [n for n in unknown if n not in imported]
    if unknown:
        raise CnnlabError(f"Unknown target set(s) {', '.join(map(str, unknown))}. Valid: the corruptions "
                          f"({', '.join(corruptions.SEVERITIES)}), the official targets ({', '.join(OFFICIAL)}) and "
                          f"the imported ones ({', '.join(imported) or 'none yet: cnnlab data import --target NAME'}).")
    if "svhn" in names and data != "svhn":
        raise CnnlabError(f"Target svhn shares no class with {data} (it holds digits): a model of {data} cannot be "
                          "scored on it. It is a transfer task: train on it from a run (data=svhn init_from=RUN).")


def class_map(target: Tuple[str, ...], source: Tuple[str, ...]) -> Dict[int, int]:
    """Target class index -> source class index, for the classes both have (by name; car = automobile)."""
    index = {SYNONYMS.get(c.lower(), c.lower()): i for i, c in enumerate(source)}
    return {i: index[SYNONYMS.get(c.lower(), c.lower())] for i, c in enumerate(target)
            if SYNONYMS.get(c.lower(), c.lower()) in index}


def mapping_text(target: Tuple[str, ...], source: Tuple[str, ...]) -> str:
    """'airplane=airplane car=automobile ...; not shared: monkey' (recorded with a run's target scores)."""
    found = class_map(target, source)
    shared = " ".join(f"{target[t]}={source[s]}" for t, s in found.items())
    rest = [c for i, c in enumerate(target) if i not in found]
    return shared + (f"; not shared: {' '.join(rest)}" if rest else "")
