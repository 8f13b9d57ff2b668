"""Small helpers shared by several test modules."""

from __future__ import annotations

import time


def lr_trace(cfg, model, steps_per_epoch: int, steps: int) -> list:
    """Each param group's lr before each of `steps` optimizer steps under cfg's optimizer and schedule, then after
    the last: [[group lrs] * (steps + 1)]. The model has no gradients, so only decoupled decay can move it."""
    from cnnlab.engine import make_optimizer, make_scheduler

    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch)
    trace = []
    for _ in range(steps):
        trace.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return trace + [[g["lr"] for g in optimizer.param_groups]]


def wait_for(condition, timeout: float = 120, what: str = "") -> None:
    """Poll `condition()` until it holds (an event: a file, a process state), failing after `timeout` seconds."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


CLASSES = ("cat", "dog", "frog")


def make_folder(root, n_train: int = 4, n_test: int = 2, fmt: str = "png", seed: int = 0):
    """A CIFAR-style image folder: train/<class>/*.png and test/<class>/*.png (3 classes), random pixels from `seed`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i:04d}.{fmt}")
    return root
