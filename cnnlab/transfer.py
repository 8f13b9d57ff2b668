"""Transfer learning: a run that starts from another run's best checkpoint (`init_from=RUN`).

- transfer=finetune (the default with init_from): every layer trains, the body at `body_lr` times the rate;
- transfer=probe: the body is a fixed feature extractor (its weights frozen, its batch norms in eval mode) and
  only the head trains: a linear probe;
- transfer=none: from random weights, as without init_from (the baseline a sweep compares with).

The head (the model's last dense layer) is kept when the run's data has its source's classes (in the same
order), and replaced by a new one for the new data's classes otherwise. The run records its source (run ID, log ID, data)
and the mode; the source records the runs made from it: a link both ways.
"""

from __future__ import annotations

from typing import Dict

from .errors import CnnlabError
from .record.vocabulary import Tag


def source_of(cfg):
    """(the run init_from names, its best checkpoint's state); refuses one that cannot be started from."""
    from . import checkpoint
    from .record import Store

    store = Store(create=False)
    record = store.find(cfg.init_from)
    if record.state != "FINISHED":
        raise CnnlabError(f"init_from={cfg.init_from}: run {record.id} is {record.state}; a run starts from a "
                          "FINISHED run's best checkpoint.")
    path = checkpoint.best_of(record, store)
    if path is None:
        raise CnnlabError(f"init_from={cfg.init_from}: run {record.id} has no best checkpoint "
                          f"({record.run_dir or 'no run directory'}), nor one among its artifacts.")
    return store, record, checkpoint.read(path, f"Run {record.id}'s checkpoint")


def start(cfg, model, classes) -> Dict[str, str]:
    """Load the source's weights into `model` (a new head where the data differs) and freeze the body for a probe;
    the tags that record it. Nothing to do (no tags) without init_from or with transfer=none."""
    if not cfg.init_from or cfg.transfer.value == "none":
        return {}
    store, record, state = source_of(cfg)
    source_cfg = state["config"]
    if source_cfg["arch"]["name"] != cfg.arch.name:
        raise CnnlabError(f"init_from={cfg.init_from}: run {record.id} is a {source_cfg['arch']['name']}, this run a "
                          f"{cfg.arch.name}: a run starts from a run of its own architecture.")
    from .engine import head_of

    head_name, head = head_of(model)
    # the head predicts the source's classes: kept when this data's are the same, in the same order (a checkpoint
    # of an older cnnlab does not name its classes: then the same data set)
    same_data = state["classes"] == list(classes) if state.get("classes") else source_cfg["data"]["name"] == cfg.data.name
    weights = {k: v for k, v in state["model"].items() if same_data or not k.startswith(f"{head_name}.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if same_data or not k.startswith(f"{head_name}.")]
    if missing or unexpected:
        raise CnnlabError(f"init_from={cfg.init_from}: run {record.id}'s weights do not fit this model (its knobs "
                          f"differ: {', '.join((missing + unexpected)[:4])}). Give the source's architecture knobs.")
    if cfg.transfer.value == "probe":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)
    return {Tag.SOURCE_RUN: record.run_id, Tag.SOURCE: f"{record.experiment}/{record.id}",
            Tag.SOURCE_DATA: source_cfg["data"]["name"], Tag.TRANSFER: cfg.transfer.value,
            Tag.HEAD: "kept" if same_data else f"replaced ({head.out_features} classes)"}


def link(tags: Dict[str, str], run_id: str) -> None:
    """On the source run: the runs started from it (tag cnnlab.transferred_to, space-separated run IDs)."""
    from .record import Store

    if Tag.SOURCE_RUN not in tags:
        return
    store = Store(create=False)
    source = store.get(tags[Tag.SOURCE_RUN])
    earlier = source.tags.get(Tag.TRANSFERRED_TO, "")
    store.open(source).set_tags({Tag.TRANSFERRED_TO: " ".join(filter(None, [earlier, run_id]))})


def describe(tags: Dict[str, str]) -> str:
    """'fine-tuned from cifar10/T3 on svhn (probe)' for the log's changes."""
    if Tag.SOURCE_RUN not in tags:
        return ""
    return f"{'probed' if tags[Tag.TRANSFER] == 'probe' else 'fine-tuned'} from {tags[Tag.SOURCE]}"
