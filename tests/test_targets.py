"""Real target datasets: each official format read from a small file written in that format (never a download),
refused clearly when corrupt with the cache untouched, and scored on the classes it shares with the training data."""

from __future__ import annotations

import io
import re
import tarfile

import numpy as np
import pytest
import torch

from cnnlab import data, target_data, targets
from cnnlab.errors import CnnlabError

from .helpers import make_folder

RNG = np.random.default_rng(0)


def images(n, size=32):
    return RNG.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def tar_of(path, members: dict, mode="w"):
    with tarfile.open(path, mode) as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def cifar10_1_files(directory, n=20):
    directory.mkdir(parents=True)
    x, y = images(n), np.arange(n) % 10
    np.save(directory / "cifar10.1_v6_data.npy", x)
    np.save(directory / "cifar10.1_v6_labels.npy", y)
    return directory, x, y


def cifar10_c_tar(path, per_severity=4, drop=None):
    members = {f"CIFAR-10-C/{c}.npy": npy_bytes(images(5 * per_severity)) for c in target_data.CIFAR10_C if c != drop}
    members["CIFAR-10-C/labels.npy"] = npy_bytes(np.tile(np.arange(per_severity) % 10, 5).astype(np.uint8))
    return tar_of(path, members)


def stl10_tar(path, n=10):
    """stl10_binary.tar.gz: images stored column-major 3 x 96 x 96, labels 1..10."""
    x = RNG.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
    x[0, :, 0, 5] = 255  # row 0, column 5: where the reader must put it back
    x[0, :, 5, 0] = 0
    stored = x.transpose(0, 1, 3, 2).tobytes()
    y = (np.arange(n) % 10 + 1).astype(np.uint8)
    members = {"stl10_binary/test_X.bin": stored, "stl10_binary/test_y.bin": y.tobytes(),
               "stl10_binary/train_X.bin": stored, "stl10_binary/train_y.bin": y.tobytes(),
               "stl10_binary/class_names.txt": "\n".join(target_data.STL10_CLASSES).encode() + b"\n"}
    return tar_of(path, members, "w:gz"), x, y


def svhn_mat(path, n=12):
    import scipy.io

    x = images(n)
    y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)  # 10 is the digit 0
    scipy.io.savemat(path, {"X": x.transpose(1, 2, 3, 0), "y": y})
    return path, x, y


def test_each_official_format_reads_into_the_cache(tmp_path):
    root = data.data_root()
    folder, x, y = cifar10_1_files(tmp_path / "c101")
    target_data.import_target("cifar10_1", folder, root)
    tx, ty = target_data.load(root, "cifar10_1").split("test")
    assert torch.equal(tx, torch.from_numpy(x).permute(0, 3, 1, 2)) and ty.tolist() == y.tolist()

    target_data.import_target("cifar10_c", cifar10_c_tar(tmp_path / "CIFAR-10-C.tar"), root)
    c = target_data.load(root, "cifar10_c")
    assert c.array("fog").shape == (20, 3, 32, 32) and c.array("labels").tolist() == [0, 1, 2, 3] * 5

    archive, sx, sy = stl10_tar(tmp_path / "stl10_binary.tar.gz")
    target_data.import_target("stl10", archive, root)
    stl = target_data.load(root, "stl10")
    tx, ty = stl.split("test")
    assert stl.classes == target_data.STL10_CLASSES and tx.shape == (10, 3, 96, 96)
    assert torch.equal(tx, torch.from_numpy(sx)) and int(tx[0, 0, 0, 5]) == 255 and int(tx[0, 0, 5, 0]) == 0
    assert ty.tolist() == (sy.astype(int) - 1).tolist() and stl.split("train")[0].shape == (10, 3, 96, 96)

    mat, vx, vy = svhn_mat(tmp_path / "test_32x32.mat")
    target_data.import_target("svhn", mat, root)
    tx, ty = target_data.load(root, "svhn").split("test")
    assert torch.equal(tx, torch.from_numpy(vx).permute(0, 3, 1, 2))
    assert ty.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]  # label 10 is the digit 0

    target_data.import_target("mine", make_folder(tmp_path / "mine", n_train=3, n_test=2), root)
    mine = target_data.load(root, "mine")
    assert mine.classes == ("cat", "dog", "frog") and mine.split("test")[0].shape == (6, 3, 32, 32)
    assert target_data.present(root) == ["cifar10_1", "cifar10_c", "mine", "stl10", "svhn"]


def test_corrupt_files_are_refused_and_the_cache_is_untouched(tmp_path):
    root = data.data_root()
    good, _, _ = cifar10_1_files(tmp_path / "good")
    target_data.import_target("cifar10_1", good, root)
    stl, _, _ = stl10_tar(tmp_path / "stl10_binary.tar.gz")
    target_data.import_target("stl10", stl, root)
    before = {p: p.read_bytes() for p in (root / "targets").rglob("*") if p.is_file()}

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "cifar10.1_v6_data.npy").write_bytes(npy_bytes(images(20))[:5000])
    np.save(truncated / "cifar10.1_v6_labels.npy", np.arange(20) % 10)
    grey = tmp_path / "grey"
    grey.mkdir()
    np.save(grey / "cifar10.1_v6_data.npy", images(20)[..., 0])
    np.save(grey / "cifar10.1_v6_labels.npy", np.arange(20) % 10)
    half_stl = tmp_path / "half.tar.gz"
    half_stl.write_bytes(stl.read_bytes()[: stl.stat().st_size // 2])
    short_bin = tar_of(tmp_path / "short.tar", {"test_X.bin": b"\0" * 1000, "test_y.bin": b"\1"})
    bad_folder = make_folder(tmp_path / "bad", n_train=2, n_test=1)
    (bad_folder / "test" / "cat" / "0000.png").write_bytes(b"not a png")
    bad_mat = tmp_path / "test_32x32.mat"
    bad_mat.write_bytes(b"MATLAB 5.0 MAT-file, not really" + bytes(200))
    cases = [("cifar10_1", truncated, "not a readable .npy array"), ("cifar10_1", grey, "expected uint8 images"),
             ("cifar10_1", tmp_path / "nothing-here", "does not exist"),
             ("stl10", half_stl, "corrupt or truncated"), ("stl10", short_bin, "not a whole number of 3x96x96"),
             ("svhn", bad_mat, "not a readable SVHN .mat file"),
             ("cifar10_c", cifar10_c_tar(tmp_path / "c.tar", drop="fog"), "lacks fog.npy"),
             ("mine", tmp_path / "missing", "does not exist"), ("mine", bad_folder, "not a readable image")]
    for name, path, message in cases:
        with pytest.raises(CnnlabError, match=message):
            target_data.import_target(name, path, root, force=True)
    after = {p: p.read_bytes() for p in (root / "targets").rglob("*") if p.is_file()}
    assert after == before  # the good caches whole, no temporary directory left
    with pytest.raises(CnnlabError, match="already in the cache.*--force"):
        target_data.import_target("cifar10_1", good, root)


def test_shared_classes_are_scored_resized_and_the_rest_left_out():
    source = data.CIFAR10_CLASSES
    mapped = target_data.class_map(target_data.STL10_CLASSES, source)
    assert mapped == {0: 0, 1: 2, 2: 1, 3: 3, 4: 4, 5: 5, 6: 7, 8: 8, 9: 9}  # car = automobile; monkey left out
    assert target_data.mapping_text(target_data.STL10_CLASSES, source).endswith("; not shared: monkey")
    x = torch.full((10, 3, 96, 96), 200, dtype=torch.uint8)
    y = torch.arange(10)
    sx, sy = targets._shared(x, y, mapped, 32, "stl10")
    assert sx.shape == (9, 3, 32, 32) and (sx == 200).all() and sy.tolist() == [0, 2, 1, 3, 4, 5, 7, 8, 9]
    with pytest.raises(CnnlabError, match="shares no class"):
        targets._shared(x, y, {}, 32, "svhn")


def test_a_run_is_scored_on_real_targets(tmp_path, cli):
    """Train on a tiny CIFAR-style cache (cat, dog, frog); STL-10 scores cats and dogs only, CIFAR-10-C per severity,
    CIFAR-10.1 on its shared classes; the mappings are recorded, and svhn or a typo is refused before training."""
    from cnnlab.record import Store, Tag

    root = data.data_root()
    data.import_dataset(make_folder(tmp_path / "src", n_train=20, n_test=6))
    target_data.import_target("stl10", stl10_tar(tmp_path / "stl10_binary.tar.gz")[0], root)
    target_data.import_target("cifar10_c", cifar10_c_tar(tmp_path / "CIFAR-10-C.tar"), root)
    target_data.import_target("cifar10_1", cifar10_1_files(tmp_path / "c101")[0], root)
    code, out, err = cli("train", "data=cifar10", "batch_size=20", "epochs=1", "eval.targets=[stl10,cifar10_c,cifar10_1,blur]",
                         "-q")
    assert code == 0, err
    record = Store().find("T0", ["cifar10"])
    m = record.metrics
    assert all(0 <= m[f"target_acc_{k}"] <= 1 for k in ("stl10", "cifar10_c", "cifar10_1", "blur"))
    severities = [m[f"target_acc_cifar10_c_s{s}"] for s in range(1, 6)]
    assert m["target_acc_cifar10_c"] == pytest.approx(sum(severities) / 5)
    assert record.tags[f"{Tag.TARGET_CLASSES}.stl10"] == ("cat=cat dog=dog; not shared: airplane bird car deer horse "
                                                         "monkey ship truck")
    code, out, err = cli("evaluate", "T0", "targets=[stl10,cifar10_1]")  # a recorded run, afterwards
    assert code == 0, err
    assert re.search(r"target_acc_stl10 (\d\.\d{4})", out).group(1) == f"{m['target_acc_stl10']:.4f}"
    for bad, message in (("svhn", "shares no class with cifar10"), ("stl_10", "Unknown target set(s) stl_10")):
        code, _, err = cli("train", "data=cifar10", f"eval.targets=[{bad}]", "-q")
        assert code == 2 and message in err and "Traceback" not in err


# ---------------------------------------------------------------- transfer


def _assert_the_views_show_the_transfers(cli, tmp_path):
    """The log, `cnnlab runs` and the report of the three transfer runs above: the transfer in TRAINING CHANGES and
    SOURCE, each training set and test protocol a code with a legend, the source beside the target run."""
    import pandas as pd

    code, out, err = cli("export-log", str(tmp_path / "log.xlsx"), "--experiment", "synthetic")
    assert code == 0, err
    table = pd.read_excel(tmp_path / "log.xlsx", sheet_name="Training log", header=1).set_index("ID")
    assert table.loc["T1", "TRAINING CHANGES"] == "Fine-tuned from T0 on synthetic (probe)"
    assert table.loc["T2", "TRAINING CHANGES"] == "Fine-tuned from T0 on synthetic (finetune, body lr x0.5)"
    assert table.loc["T3", "TRAINING CHANGES"].startswith("Fine-tuned from T0 on mine (probe)")
    assert list(table["SOURCE"].fillna("")) == ["", "synthetic/T0 (probe)", "synthetic/T0 (finetune)",
                                                "synthetic/T0 (probe)"]
    assert list(table["DATA SETS"]) == ["D0", "D0", "D0", "D1"] and list(table["TEST SPLIT"]) == ["T0"] * 3 + ["T1"]
    legend = dict(pd.read_excel(tmp_path / "log.xlsx", sheet_name="Legend").values.tolist())
    assert legend["D1"] == "mine (54 train)" and legend["T1"] == "val 10% / mine test 15"
    code, out, err = cli("runs", "--experiment", "synthetic", "--format", "table")
    assert code == 0 and "D1 = mine (54 train)" in out
    code, out, err = cli("runs", "--experiment", "synthetic", "--format", "tsv")
    assert code == 0 and out.splitlines()[2].split("\t")[out.splitlines()[0].split("\t").index("source")] == \
        "synthetic/T0 (probe)"
    code, out, err = cli("report", "T3", "--experiment", "synthetic", "-o", str(tmp_path / "T3.html"))
    assert code == 0, err
    page = (tmp_path / "T3.html").read_text()
    section = page.split("<h2>Source run</h2>")[1].split("<h2>")[0]
    assert "synthetic/T0 (tf_cnn)" in section and "replaced (3 classes)" in section and "data:image/png" in section
    assert all(f"<td>{c}</td>" in section for c in ("cat", "dog", "frog"))


def test_transfer_probe_freezes_the_body_finetune_moves_it_and_the_head_follows_the_classes(tmp_path, cli):
    """A source on synthetic data; a probe on the same data (head kept) leaves every body weight and batch-norm
    statistic bit-identical; fine-tuning changes them; on another dataset (3 classes) the head is replaced. The
    source link is recorded both ways."""
    from cnnlab import checkpoint
    from cnnlab.record import Store, Tag

    tiny = ["data=synthetic", "data.n_train=200", "data.n_test=100", "batch_size=50", "epochs=1", "batch_norm=true",
            "-q"]
    assert cli("train", *tiny)[0] == 0
    store = Store()
    source = store.find("T0", ["synthetic"])
    weights = checkpoint.read(source.run_dir / "best.pt", "source")["model"]
    head = "1.3" if "1.3.weight" in weights else max(k.rsplit(".", 1)[0] for k in weights if k.endswith("weight"))

    def body_equal(run_id):
        record = Store().get(run_id)
        state = checkpoint.read(record.run_dir / "best.pt", "run")["model"]
        body = [k for k in weights if not k.startswith(f"{head}.")]
        return all(torch.equal(state[k], weights[k]) for k in body), state

    code, out, err = cli("train", *tiny, "init_from=T0", "transfer=probe")
    assert code == 0, err
    probe = Store().find("T1", ["synthetic"])
    same, state = body_equal(probe.run_id)
    assert same and not torch.equal(state[f"{head}.weight"], weights[f"{head}.weight"])  # only the head learned
    assert probe.tags[Tag.SOURCE_RUN] == source.run_id and probe.tags[Tag.HEAD] == "kept"
    assert probe.tags[Tag.TRANSFER] == "probe" and probe.tags[Tag.SOURCE] == "synthetic/T0"

    code, out, err = cli("train", *tiny, "init_from=T0", "transfer=finetune", "body_lr=0.5")
    assert code == 0, err
    finetune = Store().find("T2", ["synthetic"])
    assert not body_equal(finetune.run_id)[0]

    data.import_dataset(make_folder(tmp_path / "src", n_train=1, n_test=1))  # (the cache's mean/std only)
    target_data.import_target("mine", make_folder(tmp_path / "mine", n_train=20, n_test=5), data.data_root())
    code, out, err = cli("train", "data.name=mine", "experiment=synthetic", "batch_size=20", "epochs=1",
                         "batch_norm=true", "init_from=T0", "transfer=probe", "-q")
    assert code == 0, err
    other = Store().find("T3", ["synthetic"])
    assert other.tags[Tag.HEAD] == "replaced (3 classes)" and other.tags[Tag.SOURCE_DATA] == "synthetic"
    state = checkpoint.read(other.run_dir / "best.pt", "run")["model"]
    assert state[f"{head}.weight"].shape[0] == 3 and body_equal(other.run_id)[0]
    linked = Store().get(source.run_id).tags[Tag.TRANSFERRED_TO].split()
    assert linked == [probe.run_id, finetune.run_id, other.run_id]

    for args, message in ((["init_from=T9"], "No run 'T9'"), (["init_from=T0", "arch=lenet5"], "is a tf_cnn"),
                          (["init_from=T0", "transfer=freeze"], "transfer")):
        code, _, err = cli("train", *tiny, *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)

    _assert_the_views_show_the_transfers(cli, tmp_path)


def test_an_official_target_is_downloaded_with_its_checksum_and_refused_without_it(tmp_path, cli, monkeypatch):
    """`cnnlab data download svhn` fetches the official files through torchvision's downloader with their MD5s
    (here a stand-in that serves real-format files from a folder, and fails as a bad checksum does)."""
    import hashlib
    import shutil

    from torchvision.datasets import utils

    served = tmp_path / "served"
    served.mkdir()
    svhn_mat(served / "test_32x32.mat")
    svhn_mat(served / "train_32x32.mat", n=30)
    seen = []

    def download_url(url, root, filename, md5=None):
        seen.append((url, md5))
        shutil.copy(served / filename, f"{root}/{filename}")
        if md5 != hashlib.md5((served / filename).read_bytes()).hexdigest():
            raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(utils, "download_url", download_url)
    code, out, err = cli("data", "download", "svhn")
    assert code == 2 and "could not be downloaded" in err and "File not found or corrupted" in err  # the MD5s differ
    assert seen[0] == tuple(target_data.OFFICIAL["svhn"].files["train_32x32.mat"])
    assert target_data.cached(data.data_root(), "svhn") is None and list(data.data_root().iterdir()) == []
    for name in ("train_32x32.mat", "test_32x32.mat"):  # the published checksums of these files
        monkeypatch.setitem(target_data.OFFICIAL["svhn"].files, name,
                            (target_data.OFFICIAL["svhn"].files[name][0],
                             hashlib.md5((served / name).read_bytes()).hexdigest()))
    code, out, err = cli("data", "download", "svhn")
    assert code == 0, err
    assert target_data.load(data.data_root(), "svhn").split("train")[0].shape == (30, 3, 32, 32)
    code, _, err = cli("data", "download", "svhn")
    assert code == 2 and "already in the cache" in err
    code, _, err = cli("data", "download", "imagenet")
    assert code == 2 and "not an official target" in err


def test_a_transfer_sweeps_and_resumes_like_any_run(cli):
    """`cnnlab sweep init_from=T0 transfer=probe,finetune,none`: three trials of distinct identity, each recorded with its
    source (none without one); a KILLED probe resumes with its body still frozen."""
    from cnnlab import checkpoint
    from cnnlab.record import Store, Tag

    tiny = ["data=synthetic", "data.n_train=200", "data.n_test=100", "batch_size=50", "batch_norm=true"]
    assert cli("train", *tiny, "epochs=1", "-q")[0] == 0
    code, out, err = cli("sweep", *tiny, "epochs=1", "init_from=T0", "transfer=probe,finetune,none", "-q")
    assert code == 0, err
    trials = {r.params["transfer"]: r for r in Store().runs(["synthetic"]) if r.sweep}
    assert sorted(trials) == ["finetune", "none", "probe"] and len({r.config_key for r in trials.values()}) == 3
    assert trials["probe"].tags[Tag.TRANSFER] == "probe" and Tag.SOURCE_RUN not in trials["none"].tags
    source = Store().find("T0", ["synthetic"])
    assert sorted(source.tags[Tag.TRANSFERRED_TO].split()) == sorted([trials["probe"].run_id,
                                                                      trials["finetune"].run_id])

    from cnnlab.config import compose
    from cnnlab.errors import Interrupted
    from cnnlab.training import from_overrides, train

    def stop_after_first(epoch, metrics):
        raise Interrupted(15)

    overrides = [*tiny, "epochs=2", "init_from=T0", "transfer=probe"]
    with pytest.raises(Interrupted):
        train(compose(overrides), overrides, on_epoch=stop_after_first, quiet=True)
    killed = [r for r in Store().runs(["synthetic"]) if r.state == "KILLED"][0]
    result = from_overrides([f"resume={killed.id}"], quiet=True)
    assert result.status == "FINISHED" and result.metrics["epochs_run"] == 2
    weights = checkpoint.read(source.run_dir / "best.pt", "source")["model"]
    state = checkpoint.read(killed.run_dir / "best.pt", "resumed")["model"]
    changed = [k for k in weights if not torch.equal(weights[k], state[k])]
    assert changed and all(k.startswith(changed[0].rsplit(".", 1)[0]) for k in changed)  # the head alone moved
