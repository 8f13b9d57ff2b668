"""Training: a composed config in, a trained model, a run directory and an MLflow run out.

`train()` reads top to bottom: set up torch, load and split the data, build the model and its
trainer, open the run's record, loop over epochs (train, validate, test, checkpoint), then score
the best checkpoint. The engine (engine.py) does the computing, the Recorder (recorder.py) the
recording and the end states: a signal ends the run KILLED (exit 130/143), an exception or a NaN
loss FAILED, a sweep's pruner PRUNED.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import data as data_mod
from . import engine, transfer
from .config import resolve
from .device import Device
from .errors import CnnlabError, Diverged, Interrupted, Pruned, interrupt_in
from .recorder import Recorder, Result, resumable, signals_as_exceptions


def from_overrides(overrides: Sequence[str], quiet: bool = False, announce: Callable = print) -> Result:
    """`cnnlab train OVERRIDES` and `cnnlab.train(...)`: compose the config and train it, or, given resume=RUN alone,
    continue that KILLED run. announce(text): what is being resumed."""
    from .config import compose

    overrides = list(overrides)
    resume = [o for o in overrides if o.startswith("resume=")]
    if not resume:
        return train(compose(overrides), overrides, quiet=quiet)
    from .record import Store, Tag

    if len(overrides) > 1:
        raise CnnlabError(f"resume= continues a run with the config it was started with; give it alone "
                          f"(got {' '.join(overrides)}).")
    record = Store(create=False).find(resume[0][len("resume="):])
    announce(f"resuming {record.experiment} {record.id} (run {record.run_id})")
    return train(None, record.tags.get(Tag.OVERRIDES, "").split(), quiet=quiet, resume=record)


def train(cfg, overrides: Sequence[str] = (), *, dataset=None, on_epoch: Optional[Callable] = None,
          parent_run_id: Optional[str] = None, tags: Optional[dict] = None, run_root: Optional[Path] = None,
          log_id: Optional[str] = None, quiet: bool = False, resume=None,
          clock: Callable[[], float] = time.perf_counter) -> Result:
    """Train `cfg` (as composed; resolved here) and record it.

    dataset: an already loaded data.Dataset (sweep workers load once and reuse it).
    on_epoch(epoch, metrics): called after each epoch; raising errors.Pruned stops the run as PRUNED.
    run_root: where the run directory goes (default runs/<experiment>/); it is named after the run.
    log_id: the ID a sweep gave this trial (default: the next T<n> of the experiment).
    resume: the Record of a KILLED run to continue from its last whole epoch, in the same MLflow run, with
    the config it was started with (`cfg` is then None): the result is the one an uninterrupted run gives.
    clock: the seconds the run is timed by (wall time, budget=), injected by tests.
    """
    with signals_as_exceptions() as gate:  # from here on a signal ends the run KILLED, never half-recorded
        return _train(cfg, overrides, gate, dataset=dataset, on_epoch=on_epoch, parent_run_id=parent_run_id,
                      tags=tags, run_root=run_root, log_id=log_id, quiet=quiet, resume=resume, clock=clock)


def _resumed(cfg, resume):
    """(the config, the checkpoint's state): a resumed run's own config and where it stood; (cfg, None) otherwise."""
    if resume is None:
        return cfg, None
    from omegaconf import OmegaConf

    from .schema import Config

    state = resumable(resume)
    return OmegaConf.merge(OmegaConf.structured(Config), state["config"]), state


def _say_replanned(rec, cfg, steps: int) -> None:
    if steps != cfg.max_steps:
        rec.report.line(f"budget {cfg.budget}: re-planned from {cfg.max_steps:,} to {steps:,} steps as the machine's "
                        "speed changed")


def _length(cfg, model, loaders, dev, num_classes: int, started: float, resumed: bool):
    """(cfg with the run's length settled, budget='s estimate or None): a budget's plan (a resumed run keeps the
    steps it planned and re-planned), or the epochs max_steps reaches (what is recorded is what runs)."""
    from . import budget

    if cfg.budget and not resumed:
        return budget.plan(cfg, model, loaders, dev, num_classes, started)
    if cfg.max_steps:
        cfg = cfg.copy()
        cfg.epochs = math.ceil(engine.total_steps(cfg, len(loaders.train)) / len(loaders.train))
    return cfg, None


def _announce(rec, cfg, size: dict, sizes: dict, where: str, estimate: Optional[dict], resumed: bool) -> None:
    """The run's first lines in its log (and its size, once), and budget='s plan."""
    if not resumed:
        rec.run.log_metrics(size)
        rec.report.line(f"run {rec.id} ({rec.run.run_id}): {cfg.arch.name}, {size['params']:,} params, "
                        f"{size['flops'] / 1e6:.1f} MFLOPs/img, {sizes['split.train']:,} train / "
                        f"{sizes['split.val']:,} val / {sizes['split.test']:,} test, {where}")
    if estimate is not None:
        rec.run.log_metrics({"budget_s": estimate["budget_s"], "budget_step_s": estimate["step_s"]})
        rec.report.line(f"budget {cfg.budget}: {cfg.max_steps:,} steps in {cfg.epochs} epoch(s) at "
                        f"{estimate['step_s']:.3f} s/step; evaluation {estimate['eval_s']:.1f} s/epoch "
                        f"({estimate['last_eval_s']:.1f} s after the last), final test "
                        f"{estimate['final_s']:.1f} s, set-up {estimate['setup_s']:.1f} s")
        training_s = cfg.max_steps * estimate["step_s"]
        if training_s < 0.5 * estimate["budget_s"]:  # e.g. recipe=fast94 budget=1m on a CPU without AMX: 12 s of 60
            rec.report.line(f"budget {cfg.budget}: training gets only {training_s:.0f} s of it; the set-up, the "
                            f"evaluations and the final test take the rest. A longer budget goes to training"
                            + (", and tta=false makes the final test cheaper." if cfg.tta else "."))


def _train(cfg, overrides, gate, *, dataset, on_epoch, parent_run_id, tags, run_root, log_id, quiet,
           resume, clock) -> Result:
    import torch

    from . import record
    from .config import identity

    started = clock()
    record.preload()  # MLflow takes about a second to import: do it while the data loads
    cfg, state = _resumed(cfg, resume)
    cfg = resolve(cfg)
    trial_key, config_key = identity(cfg)  # every run knows its configuration: summaries group seeds by it
    tags = {record.Tag.TRIAL_KEY: trial_key, record.Tag.CONFIG_KEY: config_key, **(tags or {})}
    dev = Device.open(cfg.device, cfg.precision.value, cfg.threads, clock=clock)
    device = dev.device
    torch.manual_seed(cfg.seed)  # (the CPU's and every GPU's stream)

    ds = dataset or data_mod.load(cfg.data, seed=cfg.seed)
    loaders = data_mod.loaders(ds, cfg, device)
    num_classes, in_channels = len(ds.classes), ds.x_train.shape[1]
    model, size, build_time, started_from = _model(cfg, loaders, ds.classes, in_channels, device, clock)
    tags.update(started_from)
    cfg, estimate = _length(cfg, model, loaders, dev, num_classes, started, resumed=state is not None)
    trainer = engine.Trainer(cfg, model, loaders.train, dev, num_classes)
    if state is not None:  # where the killed run stood after its last whole epoch
        trainer.load_state_dict(state["trainer"])
        loaders.train.load_state_dict(state["batches"])

    if gate.fired is not None:  # stopped during set-up: nothing was recorded, nothing is
        raise Interrupted(gate.fired)
    rec = Recorder(cfg, overrides, summary=f"{model}\n\nparameters: {size['params']:,}\nFLOPs/image: {size['flops']:,}\n",
                   sizes=loaders.sizes, device=str(device), precision=dev.precision, tags=tags, data=ds,
                   parent_run_id=parent_run_id, run_root=run_root, log_id=log_id, quiet=quiet, started=started, clock=clock,
                   resume=resume, state=state)
    _announce(rec, cfg, size, loaders.sizes, f"{device} {dev.precision}", estimate, resumed=state is not None)
    if state is None:
        transfer.link(started_from, rec.run.run_id)
    try:
        gate.arm()  # a signal during set-up ends the run here, KILLED
        from .budget import Steer

        steer = Steer(estimate, started, dev, len(loaders.train)) if estimate else None
        fit(cfg, trainer, loaders, rec, on_epoch, steer=steer, gate=gate)
        final, matrix = score(cfg, trainer, loaders, rec, ds, device,
                              deadline=steer.test_deadline() if steer is not None else None)
        final["build_time"] = build_time
        if cfg.budget:  # the steps it ended with, after the re-plans (its parameters hold the first plan)
            final["budget_steps"] = trainer.steps
            _say_replanned(rec, cfg, trainer.steps)
    except Pruned as exc:
        return rec.pruned(exc, size)
    except BaseException as exc:
        interrupt = interrupt_in(exc)
        if isinstance(interrupt, Interrupted):
            rec.killed(interrupt)
            raise interrupt
        rec.failed(exc)
        raise
    return rec.finished(final, matrix, ds.classes, size)


def _final_test(cfg, trainer, batches, rec: Recorder, epoch: int, deadline: Optional[float]) -> tuple:
    """(engine.Scores of the test set, the share of it TTA scored): the plain pass over every image, then, with
    tta=true, TTA on the least confident, as many as end by the deadline."""
    label = f"final test of epoch {epoch}'s weights"
    started = trainer.dev.now()
    with rec.report.phase(label, len(batches)) as update:
        plain = trainer.predict(batches, update=update)
    logits, used = plain, 0.0
    if cfg.tta:
        wanted = math.ceil(cfg.tta_share * len(plain))
        s_per_image = 5 * (trainer.dev.now() - started) / max(1, len(plain))  # (five more views of each)
        with rec.report.phase(f"TTA: 6 views{engine.tta_scope(cfg.tta_share)}", wanted) as update:
            logits, used = trainer.tta(batches, plain, deadline=deadline, s_per_image=s_per_image, update=update)
        if used * len(plain) < wanted:
            rec.report.line(f"budget {cfg.budget}: TTA scored the {used:.0%} least confident test images, not the "
                            f"{cfg.tta_share:.0%} of tta_share, to end within the budget")
    return engine.scores(logits, plain, batches.y, trainer.num_classes, confusion=True), used


def _model(cfg, loaders, classes, in_channels: int, device, clock):
    """(the model, its size {params, flops}, the seconds building it took, the tags of where it started from): built,
    its data-set layers fitted (airbench's whitening), and started from a source run's weights with init_from."""
    built = clock()
    model = engine.build(cfg, len(classes), in_channels, device, prepare_batches=loaders.sample)
    build_time = clock() - built
    started_from = transfer.start(cfg, model, classes)
    size = {"params": sum(p.numel() for p in model.parameters()),
            "flops": engine.count_flops(model, in_channels, cfg.image_size, device)}
    if cfg.progressive_epochs:
        try:  # a forward pass at the early epochs' size
            engine.count_flops(model, in_channels, cfg.progressive_size, device)
        except RuntimeError as exc:
            raise CnnlabError(f"arch={cfg.arch.name} cannot train at progressive_size={cfg.progressive_size}: its "
                              f"layers take one input size ({str(exc).splitlines()[0]}). Progressive resizing needs a "
                              "net that pools globally before its head (airbench, resnet20, vgg_small...); drop "
                              "progressive_epochs= for this one.") from None
    return model, size, build_time, started_from


def fit(cfg, trainer, loaders, rec: Recorder, on_epoch: Optional[Callable], steer=None, gate=None) -> None:
    """The epochs (after those a resumed run had done), as many as the trainer's steps fill: train, validate (and
    test, for the curve), record, stop early when asked. steer (budget.Steer): re-plans the run's total steps as it
    trains and after each epoch; on a CPU the device's ThreadTuner follows the steps and the evaluations' batches
    (to the end of the final test). gate (recorder.SignalGate): holds a signal off while an epoch is recorded, so
    that its checkpoints and metrics land together."""
    report = rec.report
    per_epoch = len(loaders.train)
    epoch = rec.epoch
    tuner = trainer.tuner = trainer.dev.thread_tuner()  # (steer reads it there)
    watchers = [w for w in (tuner, steer) if w is not None]  # each called after every step: the thread count first
    after_step = (lambda t: [w.after_step(t) for w in watchers]) if watchers else None
    while epoch < trainer.epochs:
        epoch += 1
        epochs = trainer.epochs
        if cfg.early_stopping and epoch - 1 - rec.best["epoch"] >= cfg.early_stopping:
            break  # a resumed run that had already stopped early
        t0, steps_before = trainer.dev.now(), trainer.steps
        for watcher in watchers:
            watcher.epoch_started(trainer)
        with report.epoch(epoch, epochs, per_epoch) as update:
            metrics = trainer.train_epoch(loaders.train, update=update, after_step=after_step)
        epochs = trainer.epochs  # (steering may have ended the run inside this epoch)
        if not math.isfinite(metrics["train_loss"]):
            raise Diverged(f"the training loss became {metrics['train_loss']} in epoch {epoch}; "
                           f"try a lower lr (now {cfg.lr})")
        if len(loaders.val.y):
            with report.phase(f"epoch {epoch}/{epochs} validation", len(loaders.val)) as update:
                metrics["val_loss"], metrics["val_acc"] = trainer.evaluate(loaders.val, update=update)[:2]
        # the test curve ("test_acc" itself is the final score of the chosen checkpoint): the last epoch's point
        # comes from the final test when that scores the same weights (`score`), saving a pass over the test set
        if cfg.eval.test_every_epoch and not (epoch == epochs and rec.becomes_best(epoch, metrics)):
            with report.phase(f"epoch {epoch}/{epochs} test", len(loaders.test)) as update:
                metrics["epoch_test_loss"], metrics["epoch_test_acc"] = trainer.evaluate(loaders.test,
                                                                                         update=update)[:2]
        for key in ("val_loss", "epoch_test_loss"):
            if key in metrics and not math.isfinite(metrics[key]):
                raise Diverged(f"the {key.replace('epoch_', '').replace('_', ' ')} became {metrics[key]} in epoch "
                               f"{epoch} (the weights overflow); try a lower lr (now {cfg.lr})")
        train_s = metrics.pop("train_time")
        metrics.update(lr=trainer.lr, epoch_time=trainer.dev.now() - t0)
        with gate.held() if gate is not None else contextlib.nullcontext():
            rec.epoch_done(epoch, metrics, trainer, loaders.train)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if cfg.early_stopping and epoch - rec.best["epoch"] >= cfg.early_stopping:
            rec.report.line(f"early stop: no better val_acc for {cfg.early_stopping} epochs")
            break
        if steer is not None and trainer.steps < trainer.total_steps:  # (an epoch that ended the run ends it)
            steer.epoch_ended(trainer, trainer.steps - steps_before, train_s, trainer.dev.now() - t0)


def score(cfg, trainer, loaders, rec: Recorder, ds, device, deadline: Optional[float] = None):
    """The best checkpoint's final scores on the test set (and the target sets): (metrics, confusion matrix).
    deadline: when TTA has to end on the run's clock (budget=), else None."""
    from . import checkpoint

    state = checkpoint.read(rec.best_path, "The best checkpoint", device)
    trainer.checkpoint_module.load_state_dict(state["model"])
    tested = trainer.dev.now()
    (test_loss, test_acc, matrix, plain_loss, plain_acc), tta_used = _final_test(cfg, trainer, loaders.test, rec,
                                                                                  state["epoch"], deadline)
    test_time = trainer.dev.now() - tested
    chosen = rec.history[state["epoch"] - 1]
    if cfg.eval.test_every_epoch and "epoch_test_acc" not in chosen:  # fit left this point of the curve to here
        rec.epoch_tested(state["epoch"], plain_loss, plain_acc)
    history = rec.history
    final = {
        "test_acc": test_acc, "test_loss": test_loss, "best_epoch": state["epoch"],
        "train_acc_final": chosen["train_acc"], "val_acc_best": chosen.get("val_acc", float("nan")),
        "val_loss_best": min((h["val_loss"] for h in history if "val_loss" in h), default=float("nan")),
        **({"no_tta_test_acc": chosen["epoch_test_acc"]} if cfg.tta and "epoch_test_acc" in chosen else {}),
        "epochs_run": len(history), "train_time": sum(h["epoch_time"] for h in history),
        "compile_time": trainer.compile_time, "test_time": test_time,
        **({"tta_share_used": tta_used} if cfg.tta else {}),
    }
    if cfg.eval.targets:
        from .targets import evaluate_targets, mapping_tags

        with rec.report.phase("target sets", len(cfg.eval.targets)) as update:
            final.update(evaluate_targets(trainer.eval_model, list(cfg.eval.targets), ds,
                                          data_mod.data_root(cfg.data.root), batch_size=loaders.eval_batch_size,
                                          dev=trainer.dev, channels_last=loaders.channels_last, image_size=cfg.image_size,
                                          severity=cfg.eval.severity, seed=cfg.seed, update=update))
        rec.run.set_tags(mapping_tags(list(cfg.eval.targets), ds, data_mod.data_root(cfg.data.root)))
    return final, matrix
