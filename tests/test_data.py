"""Importing CIFAR-10 copies into the cache, loading, splitting and batching."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab import data
from cnnlab.errors import CnnlabError

from .helpers import CLASSES, make_folder


def cifar_python_archive(path: Path, per_batch: int = 6) -> tuple[Path, np.ndarray]:
    """A miniature cifar-10-python.tar.gz: the official layout and pickle format."""
    src = path.parent / "cifar-10-batches-py"
    src.mkdir()
    rng = np.random.default_rng(1)
    images = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        images.append(x)
        with open(src / name, "wb") as f:
            pickle.dump({"data": x, "labels": [i % 10 for i in range(per_batch)], "batch_label": name}, f, protocol=2)
    with open(src / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(data.CIFAR10_CLASSES), "num_cases_per_batch": per_batch}, f, protocol=2)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    shutil.rmtree(src)
    return path, np.concatenate(images[:5])


def load_cache():
    return data.load(SimpleNamespace(name="cifar10", root=None, download=False))


@pytest.mark.parametrize("kind", ["dir", "tar.gz", "tar", "zip"])
def test_import_image_folder(tmp_path, kind):
    folder = make_folder(tmp_path / "src" / "cifar10-jpeg")
    if kind == "dir":
        path = folder
    elif kind == "zip":
        path = tmp_path / "c.zip"
        with zipfile.ZipFile(path, "w") as z:
            for f in folder.rglob("*.png"):
                z.write(f, f.relative_to(folder.parent).as_posix())
    else:
        path = tmp_path / f"c.{kind}"
        with tarfile.open(path, "w:gz" if kind == "tar.gz" else "w") as tar:
            tar.add(folder, arcname="cifar10-jpeg")
    info = data.import_dataset(path)
    assert (info["train"], info["test"], info["classes"]) == (12, 6, list(CLASSES))
    ds = load_cache()
    assert ds.x_train.shape == (12, 3, 32, 32) and ds.x_train.dtype == torch.uint8
    assert ds.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # pixels survive exactly (PNG is lossless)
    first = np.asarray(Image.open(folder / "train" / "cat" / "0000.png")).transpose(2, 0, 1)
    assert np.array_equal(ds.x_train[0].numpy(), first)
    assert data.cache_info()["sha256"] == ("" if kind == "dir" else hashlib.sha256(path.read_bytes()).hexdigest())


def test_import_official_python_archive(tmp_path):
    path, train_images = cifar_python_archive(tmp_path / "cifar-10-python.tar.gz")
    info = data.import_dataset(path)
    assert (info["train"], info["test"]) == (30, 6)
    ds = load_cache()
    assert ds.classes == data.CIFAR10_CLASSES
    assert np.array_equal(ds.x_train.numpy().reshape(30, -1), train_images)
    assert ds.y_train[:6].tolist() == [0, 1, 2, 3, 4, 5]


def test_official_archive_refuses_foreign_pickles(tmp_path):
    src = tmp_path / "cifar-10-batches-py"
    src.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (src / name).write_bytes(pickle.dumps({"data": SimpleNamespace()}))
    with pytest.raises(CnnlabError, match="not a readable CIFAR batch"):
        data.import_dataset(src)


def test_corrupt_and_truncated_inputs_keep_the_good_cache(tmp_path):
    good = make_folder(tmp_path / "good")
    data.import_dataset(good)
    cache = data.data_root() / data.CACHE_NAME
    before = cache.read_bytes()

    archive = tmp_path / "c.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(good, arcname="x")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 10)
    bad_image = make_folder(tmp_path / "bad")
    (bad_image / "train" / "cat" / "0001.png").write_bytes(b"not a png")
    no_test = make_folder(tmp_path / "notest")
    shutil.rmtree(no_test / "test")

    for path, needle in [(truncated, "corrupt or truncated"), (garbage, "tar"), (bad_image, "not a readable image"),
                         (no_test, "no test images"), (tmp_path / "missing.zip", "does not exist")]:
        with pytest.raises(CnnlabError, match=needle):
            data.import_dataset(path)
        assert cache.read_bytes() == before
    assert not list(cache.parent.glob(".cifar10-*"))  # no temporary files left behind


def test_mixed_image_sizes_are_refused(tmp_path):
    folder = make_folder(tmp_path / "f")
    Image.new("RGB", (16, 16)).save(folder / "test" / "dog" / "9999.png")
    with pytest.raises(CnnlabError, match="differ in size"):
        data.import_dataset(folder)


@pytest.fixture
def http_archive(tmp_path):
    """A miniature cifar-10-python.tar.gz served over HTTP on loopback: (url, md5)."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    path, _ = cifar_python_archive(served / "cifar-10-python.tar.gz")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz", hashlib.md5(path.read_bytes()).hexdigest()
    server.shutdown()


def test_download_uses_torchvision_with_checksum(http_archive):
    url, md5 = http_archive
    ds = data.load(SimpleNamespace(name="cifar10", root=None, download=True, url=url, md5=md5))
    assert len(ds.y_train) == 30
    assert not (data.data_root() / "cifar-10-python.tar.gz").exists()  # the archive is removed after import


def test_bad_checksum_or_offline_says_how_to_import(http_archive):
    url, _ = http_archive
    bad_md5 = SimpleNamespace(name="cifar10", root=None, download=True, url=url, md5="0" * 32)
    offline = SimpleNamespace(name="cifar10", root=None, download=True, url="http://127.0.0.1:9/cifar.tar.gz",
                              md5="0" * 32)
    for cfg in (bad_md5, offline):
        with pytest.raises(CnnlabError) as info:
            data.load(cfg)
        message = str(info.value)
        assert "cnnlab data import PATH" in message and str(data.data_root()) in message
    with pytest.raises(CnnlabError, match="data.download=false"):
        data.load(SimpleNamespace(name="cifar10", root=None, download=False))


def test_stratified_split_is_seeded_disjoint_and_balanced():
    ds = data.synthetic(1000, 100)
    s1 = data.split(ds, 0.2, seed=3)
    s2 = data.split(ds, 0.2, seed=3)
    s3 = data.split(ds, 0.2, seed=4)
    assert torch.equal(s1.x_val, s2.x_val) and not torch.equal(s1.x_val, s3.x_val)
    assert len(s1.y_val) == 200 and len(s1.y_train) == 800
    assert torch.bincount(s1.y_val).tolist() == [20] * 10
    # no image is in both train and val
    train_keys = {bytes(x.numpy()) for x in s1.x_train}
    assert not any(bytes(x.numpy()) in train_keys for x in s1.x_val)
    quick = data.split(ds, 0.2, train_fraction=0.25, seed=3)
    assert torch.bincount(quick.y_train).tolist() == [20] * 10
    assert torch.equal(quick.x_val, s1.x_val)  # the fraction never changes the validation set


def test_batches_shuffle_every_epoch_and_cover_everything():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 4, 4).contiguous()
    y = torch.arange(10)
    batches = data.Batches(x, y, 4, mean=(0, 0, 0), std=(1 / 255,) * 3, shuffle=True, image_size=4)
    epochs = [torch.cat([yb for _, yb in batches]) for _ in range(3)]
    assert len(batches) == 3 and all(sorted(e.tolist()) == list(range(10)) for e in epochs)
    assert not torch.equal(epochs[0], epochs[1])
    xb, yb = next(iter(data.Batches(x, y, 4, mean=(0, 0, 0), std=(1 / 255,) * 3, image_size=4)))
    assert torch.equal(xb[:, 0, 0, 0], yb.float())  # normalisation: (x - 0) / (1/255 * 255)


@pytest.mark.parametrize("fill", ["zeros", "reflect"])
def test_crop_flip_is_the_drawn_shift_and_mirror_of_each_image(fill):
    x = torch.randint(1, 255, (64, 3, 8, 6), dtype=torch.uint8)  # no zeros: zeros only come from the padding
    idx = torch.randperm(64)[:40]
    g = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 5, (2, 40), generator=g)
    flip = torch.rand(40, generator=g) < 0.5
    out = data.random_crop_flip(data.crop_views(x, 2, fill), idx, dy, dx, flip)
    assert out.shape == (40, 3, 8, 6) and out.is_contiguous(memory_format=torch.channels_last)  # as models read
    mode = "constant" if fill == "zeros" else "reflect"
    for img, i, top, left, mirror in zip(out, idx, dy, dx, flip):
        crop = torch.nn.functional.pad(x[i][None].float(), (2, 2, 2, 2), mode=mode)[0, :, top:top + 8, left:left + 6]
        assert torch.equal(img, (crop.flip(-1) if mirror else crop).to(torch.uint8))
    assert 0 < flip.sum() < 40 and (out == 0).any() == (fill == "zeros")
    zero = torch.zeros(40, dtype=torch.long)
    fixed = data.random_crop_flip(data.crop_views(x, 0), idx, zero, zero, torch.ones(40, dtype=torch.bool))
    assert torch.equal(fixed, x[idx].flip(-1))


def test_a_batch_normalised_in_channels_last_rows_has_the_values_of_the_per_channel_broadcast():
    x = torch.randint(0, 256, (20, 3, 8, 6), dtype=torch.uint8)
    batches = data.Batches(x, torch.zeros(20, dtype=torch.long), 20, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    plain = (x.float() - batches.mean) / batches.std
    rows = batches.normalise(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(rows, plain) and rows.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batches.normalise(x), plain)  # an NCHW batch (the test set's) broadcasts as before


@pytest.mark.parametrize("flip", ["random", "alternating"])
def test_augmentation_is_drawn_per_image_and_epoch_whatever_the_batch_size(flip):
    """The device draws an epoch's shifts and flips for all images at once: each image gets the same augmentation
    whatever the batch layout (per-batch draws from a host generator gave each batch size its own sequence)."""
    x = torch.randint(1, 255, (50, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(50)

    def epochs(batch_size):
        batches = data.Batches(x, y, batch_size, mean=(0, 0, 0), std=(1 / 255,) * 3, shuffle=True, augment=True,
                               translate=2, flip=flip, image_size=8, seed=7)
        return [torch.cat([xb for xb, _ in batches]) for _ in range(3)]

    small, large = epochs(7), epochs(50)
    assert all(torch.equal(a, b) for a, b in zip(small, large))
    assert not torch.equal(small[0], small[1])  # and a new draw every epoch


def test_synthetic_is_deterministic_and_learnable():
    a, b = data.synthetic(100, 20, seed=0), data.synthetic(100, 20, seed=0)
    assert torch.equal(a.x_train, b.x_train) and a.x_train.shape == (100, 3, 32, 32)
    assert torch.bincount(a.y_train).tolist() == [10] * 10
    assert not torch.equal(a.x_train, data.synthetic(100, 20, seed=1).x_train)
    # learnable: the class shows in the pixels (a nearest class mean of coarse features finds it on the test
    # split), and only through the label: with the labels shuffled the same classifier is at chance
    ds = data.synthetic(1000, 300, seed=0)
    features = lambda x: torch.nn.functional.avg_pool2d(x.float() / 255, 8).flatten(1)  # noqa: E731

    def accuracy(labels):
        means = torch.stack([features(ds.x_train)[labels == c].mean(0) for c in range(10)])
        return (torch.cdist(features(ds.x_test), means).argmin(1) == ds.y_test).float().mean().item()

    assert accuracy(ds.y_train) > 0.9
    assert accuracy(ds.y_train[torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(0))]) < 0.3


def test_an_archive_with_unsafe_members_names_them_and_needs_force_to_shrink_the_cache(tmp_path):
    from tests.bench import archives

    data.import_dataset(make_folder(tmp_path / "big", n_train=8, n_test=4))  # 36 images
    cache = data.data_root() / data.CACHE_NAME
    before = cache.read_bytes()
    small = archives.traversal(tmp_path / "hostile.tar.gz", per_class=2, classes=CLASSES)  # 12 safe images
    with pytest.raises(CnnlabError) as refused:
        data.import_dataset(small)
    message = str(refused.value)
    assert "12 images where the cache holds 36" in message and "--force" in message
    for name in ("../train/cat/escape.png", "/etc/train/cat/absolute.png", "train/cat/fifo.png", "train/dog/link.png"):
        assert name in message
    assert cache.read_bytes() == before

    info = data.import_dataset(small, force=True)
    assert (info["train"], info["test"]) == (6, 6)  # the skipped members were not read, whatever their names
    assert sorted(s.split(" (")[0] for s in info["skipped"]) == sorted(
        ["../train/cat/escape.png", "/etc/train/cat/absolute.png", "train/cat/fifo.png", "train/dog/link.png"])


def test_import_prints_the_skipped_members(tmp_path):
    from typer.testing import CliRunner

    from cnnlab.cli import app
    from tests.bench import archives

    result = CliRunner().invoke(app, ["data", "import", str(archives.traversal(tmp_path / "h.tar.gz"))])
    assert result.exit_code == 0, result.output
    assert "4 member(s) were not read" in result.output and "../train/cat/escape.png ('..' in its path)" in \
        result.output


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_a_decompression_bomb_is_refused_without_reading_it_whole(tmp_path, monkeypatch, suffix):
    from tests.bench import archives

    monkeypatch.setattr(data, "MAX_MEMBER_BYTES", 1 << 20)
    reads = []
    real = data._bounded

    def spy(name, declared, read):
        return real(name, declared, lambda n: reads.append(n) or read(n))

    monkeypatch.setattr(data, "_bounded", spy)
    bomb = archives.bomb(tmp_path / f"bomb{suffix}", 8 << 20)
    with pytest.raises(CnnlabError, match="decompression bomb") as refused:
        data.import_dataset(bomb)
    assert "train/cat/bomb.png" in str(refused.value)
    assert all(n <= (1 << 20) + 1 for n in reads)  # never asked for the whole member
    assert not (data.data_root() / data.CACHE_NAME).exists()


def test_a_pixel_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from tests.bench import archives

    folder = archives.pixel_bomb(tmp_path / "f", side=3000)  # 27 MB decoded, a few kB on disk
    assert (folder / "train" / "cat" / "bomb.png").stat().st_size < 100_000
    decoded = []
    real = PILImage.Image.convert
    monkeypatch.setattr(PILImage.Image, "convert", lambda self, *a, **k: decoded.append(self.size) or
                        real(self, *a, **k))
    with pytest.raises(CnnlabError, match="3000x3000 pixels.*not decoded"):
        data.import_dataset(folder)
    assert (3000, 3000) not in decoded
