"""Checkpoints, named once: how one is saved, found and read, and a model made from one. A checkpoint holds
state_dicts and plain values (never a pickled module): `torch.load(path, weights_only=True)` reads it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import CnnlabError


def save(path: Path, state: dict) -> None:
    """Write `state` to `path`: aside, then moved into place, so that a reader never sees half a file."""
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read(path: Path, what: str, device="cpu") -> dict:
    """The checkpoint at `path`, its tensors on `device`. A damaged file (truncated, garbage, not one of ours: torch
    raises many types) is a CnnlabError that starts with `what` (e.g. "Run T3's checkpoint")."""
    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or "model" not in state or "config" not in state:
            raise ValueError("not a cnnlab checkpoint")
        return state
    except Exception as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise CnnlabError(f"{what} {path} is damaged ({type(exc).__name__}{': ' + detail if detail else ''})") \
            from None


def best_of(record, store=None) -> Optional[Path]:
    """A run's best checkpoint: in its run directory, else (a store on a server) its artifact. None when there is
    none."""
    path = (record.run_dir or Path("/nonexistent")) / "best.pt"
    if path.exists():
        return path
    if store is not None and record.state == "FINISHED":  # a finished run logged it as an artifact
        return store.download(record.run_id, "checkpoint/best.pt")
    return None


def model_of(state: dict, num_classes: int, in_channels: int, device, what: str):
    """The model a checkpoint's config describes, on `device`, with the checkpoint's weights."""
    from omegaconf import OmegaConf

    from . import engine

    model = engine.build(OmegaConf.create(state["config"]), num_classes, in_channels, device)
    try:
        engine.plain(model).load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CnnlabError(f"{what}: its weights do not fit the model its config describes "
                          f"({str(exc).splitlines()[0][:200]}).") from None
    return model
