"""budget=: train for as many steps as end the whole run (set-up, training, evaluation, TTA) within a time budget.

`plan()` times a few training steps and evaluation passes of the run's own model on its own batches, then gives
the run back exactly as it was (weights, batch stream, random state), and returns the config with `max_steps`
and `epochs` set: the schedule (warm-up, decay, weight averaging) spans those steps, and the run's parameters
record them. While it trains, `Steer` solves the steps left again every few seconds and after each epoch, from
the measured speed, since a machine's speed changes; the run's metric `budget_steps` records the steps it ended
with. Until a re-plan changes the length, a budget run is the plain run of the steps it planned.
"""

from __future__ import annotations

import copy
import math

from .errors import CnnlabError
from .schema import duration

MARGIN = 0.015  # of the time left, kept for what the estimate cannot see (a slower step now and then)
END_SECONDS = 2.0  # the run's end: confusion matrix figure, artifacts, MLflow
EVAL_SURPRISE = 1.5  # an evaluation this much slower (or faster) than its steps foretold was timed as the load changed


def _time_steps(trainer, loaders, budget_s: float) -> float:
    """Seconds per training step, timed in the real training loop (batches, bookkeeping and all): warm up (the first
    steps set up kernels and memory) until two short runs agree within 10%, then time one run of at least 3 steps,
    or of 1% of the budget (at most an epoch)."""
    def seconds_per_step(n: int) -> float:
        return loaders.train.batch_size / trainer.probe(loaders.train, n)["img_per_s"]

    warm = [seconds_per_step(3)]
    while len(warm) < 3 or abs(warm[-1] - warm[-2]) > 0.1 * warm[-2] and len(warm) < 8:
        warm.append(seconds_per_step(2))
    return seconds_per_step(max(3, min(len(loaders.train), math.ceil(0.01 * budget_s / warm[-1]))))


def _time_evaluation(cfg, model, trainer, loaders, dev, step_s: float, budget_s: float) -> tuple:
    """({"plain", "tta"}: seconds per image of a forward pass (and of TTA's six, same shapes), seconds to save a
    checkpoint). Timed after a warm-up pass, on as much of a test batch as costs about 2% of the budget (a forward
    pass is about a third of a step): a big model's whole 500-image batch would cost minutes of a 10-minute budget on
    one core."""
    import io

    import torch

    from . import engine

    forward_s = step_s / loaders.train.batch_size / 3
    x = next(iter(loaders.test))[0]
    x = x[:max(32, int(0.02 * budget_s / (8 * forward_s)))]
    model.eval()
    with torch.inference_mode(), dev.autocast():
        model(x)
        per_image = {}
        for name, forward in (("plain", model), ("tta", lambda v: engine.tta_logits(model, v)))[:2 if cfg.tta else 1]:
            t0 = dev.now()
            forward(x)
            per_image[name] = (dev.now() - t0) / len(x)
    model.train()
    buffer = io.BytesIO()
    t0 = dev.now()
    torch.save(trainer.state_dict(), buffer)
    return per_image, dev.now() - t0


def plan(cfg, model, loaders, dev, num_classes: int, started: float):
    """(cfg with max_steps and epochs for the budget, {step_s, eval_s, final_s, setup_s, budget_s, ...}; final_s is the
    whole final test with the run's end, tta_s the part of it TTA's extra views take). dev: the run's
    device.Device, whose clock waits for the device's queued work before each reading. The model, the batches and
    the random streams are given back as they were."""
    from omegaconf import OmegaConf, open_dict

    from . import engine

    budget_s = duration(cfg.budget)
    saved = copy.deepcopy(model.state_dict())
    batches_state, rng = copy.deepcopy(loaders.train.state_dict()), dev.rng_state()
    probe_cfg = OmegaConf.merge(cfg, {"compile": False})  # (a compiled run is faster: it ends early)
    trainer = engine.Trainer(probe_cfg, model, loaders.train, dev, num_classes)
    step_s = _time_steps(trainer, loaders, budget_s)
    per_image, save_s = _time_evaluation(cfg, model, trainer, loaders, dev, step_s, budget_s)
    model.load_state_dict(saved)  # the run starts from where it stood
    loaders.train.load_state_dict(batches_state)
    dev.set_rng_state(rng)

    n_test, n_val = len(loaders.test.y), len(loaders.val.y)
    tested = n_test if cfg.eval.test_every_epoch else 0
    eval_s = (n_val + tested) * per_image["plain"] + 2 * save_s  # and the best and last checkpoints
    # without a validation split the last epoch's weights are the ones the final test scores, and its point of the
    # test curve comes from that test (train.fit)
    last_eval_s = (n_val + (tested if n_val else 0)) * per_image["plain"] + 2 * save_s
    tta_s = n_test * cfg.tta_share * (per_image["tta"] - per_image["plain"]) if cfg.tta else 0.0  # its extra views
    targets_s = n_test * len(cfg.eval.targets) * per_image["plain"]
    final_s = n_test * per_image["plain"] + tta_s + targets_s + END_SECONDS
    setup_s = dev.now() - started
    left = available(budget_s, setup_s, final_s) + lent_by_tta(step_s, tta_s)
    steps, epochs = solve(left, step_s, eval_s, len(loaders.train), last_eval_s)
    estimate = {"budget_s": budget_s, "step_s": step_s, "eval_s": eval_s, "last_eval_s": last_eval_s,
                "final_s": final_s, "tta_s": tta_s, "targets_s": targets_s, "setup_s": setup_s}
    if steps < 1:
        need = setup_s + (step_s + last_eval_s + final_s) / (1 - MARGIN)
        raise CnnlabError(
            f"budget={cfg.budget} is too short for this run: its set-up took {setup_s:.0f} s, a training step takes "
            f"{step_s:.2f} s, the evaluation after it {last_eval_s:.1f} s and the final test {final_s:.1f} s, so even "
            f"one step needs about {math.ceil(need)} s. Give a longer budget (e.g. budget={math.ceil(need / 60) + 1}m), "
            "or a smaller model or batch.")
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.max_steps, cfg.epochs = steps, epochs
    return cfg, estimate


def available(budget_s: float, elapsed_s: float, final_s: float) -> float:
    """The seconds left for training and its evaluations: the budget's time left less the margin on it (what the
    estimate cannot see grows with the time it looks ahead) and the final test."""
    return (budget_s - elapsed_s) * (1 - MARGIN) - final_s


def lent_by_tta(step_s: float, tta_s: float) -> float:
    """The seconds of the final test's TTA (its extra views, `tta_s`) that training may take: up to one step. TTA
    gives way at its deadline, so a last step that does not quite fit still ends the run on time, at the cost of a few
    TTA images (the most confident of those it would have scored) rather than a step's time of the budget: a 1-minute
    fast94 run (7 steps of 1.9 s, each 3.2% of it) that dropped one ended 5.8% early with its TTA done."""
    return min(step_s, tta_s)


def solve(available_s: float, step_s: float, eval_s: float, steps_per_epoch: int, last_eval_s: float,
          into: int = 0) -> tuple:
    """(steps, epochs): the most training steps that fit `available_s` seconds with an evaluation after each
    epoch (`last_eval_s` after the last), the last epoch perhaps cut; (0, 0) when not even one step does.
    into: steps already taken in the epoch under way, whose evaluation is still to come ((0, 1): stop now, and
    that epoch's evaluation fits)."""
    best = (0, 0)
    for epochs in range(1, 100_000):
        room = epochs * steps_per_epoch - into  # steps from here to the end of the epochs-th epoch
        steps = min(room, int((available_s - (epochs - 1) * eval_s - last_eval_s) / step_s))
        if steps < 0 or steps <= room - steps_per_epoch:
            break
        best = (steps, epochs)
    return best


class Steer:
    """budget= steered by its deadline: the steps left, solved again every `every_s` seconds of training (from the
    speed of the steps since the last check) and after each epoch (from its measured evaluation time).

    A machine's speed changes inside an epoch (a browser, another training beside it): a plan revised only at
    epoch ends saw a slowdown too late, and a one- or two-epoch run could not correct at all (runs ended 6-60%
    early or 36% late under load). The evaluations still to come and the final test's plain pass are timed once,
    then scaled by how much slower the steps now run than when they were timed; the time kept for TTA's extra views
    is not (TTA gives way by itself, see test_deadline: a slower machine costs TTA images, not training steps), and
    a last step that does not quite fit takes its time from TTA (lent_by_tta). After each re-plan the schedule
    goes on from where it stands over the new length (Trainer.retarget), so it completes its shape whatever the
    speed; training stops when only the evaluations and the final test fit, and the final test always runs: its
    plain pass whole, its TTA on as many images as end by `test_deadline`."""

    def __init__(self, estimate: dict, started: float, dev, steps_per_epoch: int, every_s: float = 2.0):
        """dev: the run's device.Device, whose clock (read after each step) and synchronised clock (read at each
        re-plan) time the run; started: the run's start on that clock."""
        self.budget_s, self.final_s, self.probe_step_s = estimate["budget_s"], estimate["final_s"], estimate["step_s"]
        self.eval_s, self.last_eval_s, self.eval_step_s = estimate["eval_s"], estimate["last_eval_s"], estimate["step_s"]
        self.started, self.dev, self.steps_per_epoch, self.every_s = started, dev, steps_per_epoch, every_s
        self.targets_s, self.tta_s = estimate["targets_s"], estimate["tta_s"]
        self.mark, self.mark_threads = (started, 0), None  # (time, steps) at the last check, and the thread count then
        self.recent_step_s = None  # the step time the last check measured in this epoch
        self.surprised = False  # the last evaluation was set aside (epoch_ended)

    def test_deadline(self) -> float:
        """When the final test's TTA has to end, on the run's clock: at the budget, less the run's end and the target
        sets (as timed by the plan). Its plain pass always runs; TTA takes what is left (engine.tta_within)."""
        return self.started + self.budget_s - END_SECONDS - self.targets_s

    def epoch_started(self, trainer) -> None:
        self._mark(self.dev.now(), trainer)
        self.recent_step_s = None

    def after_step(self, trainer) -> None:
        """Called after each training step: re-plans when `every_s` seconds have passed since the last check.

        Steps timed across a change of the thread count say nothing of the speed from now on, so the window starts
        again when the tuner changes it, and no plan is made from steps timed at a count the tuner is about to change
        (another process has just started, and until the tuner leaves it its core the steps run up to 5x slower: a
        1-minute run that stopped on such a window ended 10% early, a stop being for good): the plan stands until
        a window at the new count."""
        then, steps = self.mark
        tuner = trainer.tuner  # the device's ThreadTuner, when it has one (training.fit gives it the trainer)
        if tuner is not None and tuner.threads != self.mark_threads:
            self._mark(self.dev.now(), trainer)
            return
        if self.dev.clock() - then < self.every_s or trainer.steps <= steps:
            return
        now = self.dev.now()
        if tuner is None or not tuner.pending():
            self.recent_step_s = (now - then) / (trainer.steps - steps)
            trainer.retarget(trainer.steps + self._solve(trainer, self.recent_step_s, now))
        self._mark(now, trainer)

    def _mark(self, now: float, trainer) -> None:
        self.mark = (now, trainer.steps)
        self.mark_threads = trainer.tuner.threads if trainer.tuner is not None else None

    def epoch_ended(self, trainer, epoch_steps: int, train_s: float, epoch_s: float) -> None:
        """After an epoch of `epoch_steps` steps that trained for `train_s` seconds and took `epoch_s` in all
        (evaluation, checkpoints and records included): its evaluation time is the one to plan with now, at the
        speed of its last steps (the epoch's mean hides a change inside it).

        Unless the machine changed during the evaluation itself: one that takes more than EVAL_SURPRISE times (or
        less than its inverse) what the steps before it foretold was timed while the load changed (a process that
        starts mid-evaluation runs it up to 5x slower until the thread tuner, every 2 s of training or evaluation,
        leaves it a core; planning with that time ended a 1-minute run 16% early). It is set aside once, the earlier
        time scaled by the steps' speed standing; a second such evaluation in a row is the machine as it now is."""
        step_s = self.recent_step_s or train_s / max(1, epoch_steps)
        measured = epoch_s - train_s
        foretold = self.eval_s * step_s / self.eval_step_s  # (evaluations follow the steps' speed, both ways)
        surprise = measured / max(1e-9, foretold)
        if not 1 / EVAL_SURPRISE <= surprise <= EVAL_SURPRISE and not self.surprised:
            self.surprised = True
        else:
            self.surprised = False
            self.last_eval_s *= measured / max(1e-9, self.eval_s)  # in the proportion the plan had
            self.eval_s, self.eval_step_s = measured, step_s
        trainer.retarget(trainer.steps + self._solve(trainer, step_s, self.dev.now()))

    def _solve(self, trainer, step_s: float, now: float) -> int:
        """The training steps left, from steps of `step_s` seconds from `now` on."""
        # slower than when the evaluations were timed: they will be too. Faster steps are no sign of faster
        # evaluations (fewer threads can speed up training steps and slow down the final test), so the times
        # measured stand
        eval_scale = max(1.0, step_s / self.eval_step_s)
        final_scale = max(1.0, step_s / self.probe_step_s)
        fixed_s = self.final_s - END_SECONDS - self.tta_s  # the plain pass and the target sets
        final_s = fixed_s * final_scale + self.tta_s + END_SECONDS  # (the end: files, MLflow)
        left = available(self.budget_s, now - self.started, final_s) + lent_by_tta(step_s, self.tta_s)
        more, _ = solve(left, step_s, self.eval_s * eval_scale, self.steps_per_epoch, self.last_eval_s * eval_scale,
                        into=trainer.steps % self.steps_per_epoch)
        return more
