"""Hostile inputs for `cnnlab data import`, written in the formats it reads: shared by tests/test_data.py and
`make bench ARGS=faults` (which reports each one's max RSS).

- `traversal`: a .tar.gz whose images sit beside members that must not be read: '../' and absolute
  names, a FIFO, a symlink.
- `bomb`: a small .tar.gz or .zip holding one member of `size` bytes of zeros (a decompression bomb).
- `pixel_bomb`: a PNG whose header says `side` x `side` pixels, its pixel data a few kB of zlib.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CHUNK = 1 << 20


def png_bytes(seed: int = 0, side: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def traversal(path: Path, per_class: int = 2, classes=("cat", "dog")) -> Path:
    """`per_class` train and test images per class, plus four members that must be skipped."""
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for c in classes:
                for i in range(per_class):
                    _add(tar, f"{split}/{c}/{i}.png", png_bytes(i))
        _add(tar, "../train/cat/escape.png", png_bytes(7))
        _add(tar, "/etc/train/cat/absolute.png", png_bytes(8))
        _add(tar, "train/cat/fifo.png", kind=tarfile.FIFOTYPE)
        _add(tar, "train/dog/link.png", kind=tarfile.SYMTYPE, link="/etc/passwd")
    return path


class _Zeros(io.RawIOBase):
    """`size` zero bytes, read in chunks: a bomb is written without holding it."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left, CHUNK)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def bomb(path: Path, size: int) -> Path:
    """A .tar.gz or .zip (by `path`'s suffix) of one image folder whose train/cat/bomb.png is `size` zeros."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("test/cat/0.png", png_bytes())
            with archive.open("train/cat/bomb.png", "w", force_zip64=True) as member:
                zeros = _Zeros(size)
                while chunk := zeros.read(CHUNK):
                    member.write(chunk)
        return path
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        _add(tar, "test/cat/0.png", png_bytes())
        info = tarfile.TarInfo("train/cat/bomb.png")
        info.size = size
        tar.addfile(info, io.BufferedReader(_Zeros(size)))
    return path


def pixel_bomb(path: Path, side: int) -> Path:
    """An image folder whose train/cat/bomb.png declares side x side RGB pixels (all black)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    squeeze = zlib.compressobj(9)
    row = bytes(1 + 3 * side)  # filter byte 0, then black pixels
    idat = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    for split in ("train", "test"):
        (path / split / "cat").mkdir(parents=True, exist_ok=True)
        (path / split / "cat" / "0.png").write_bytes(png_bytes())
    (path / "train" / "cat" / "bomb.png").write_bytes(png)
    return path
