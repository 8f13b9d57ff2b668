"""The only place cnnlab reaches into Optuna's private API, for what its public API does not offer: a trial's
storage id (to beat its heartbeat and mark it), failing a trial no worker took, and a `Trial` to report to from
another process than the one that asked for it. Checked against the Optuna releases in CHECKED:
tests/test_sweep.py fails outside that range, and exercises each call on a real study."""

from __future__ import annotations

CHECKED = ("4.0", "5.1")  # [from, before): the Optuna versions these calls were checked against


def _storage(study):
    return study._storage


def trial_id(study, number: int) -> int:
    """The storage's id of trial `number` of `study`."""
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def fail(study, frozen) -> None:
    """Set a RUNNING trial (a FrozenTrial) FAIL."""
    from optuna.trial import TrialState

    study._storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)


def has_heartbeats(study) -> bool:
    """Does the study's storage keep trial heartbeats (an RDB storage with heartbeat_interval)?"""
    return bool(getattr(study._storage, "get_heartbeat_interval", lambda: None)())


def live_trial(study, number: int):
    """A `Trial` of trial `number` that reports (and asks the pruner) from this process."""
    import optuna

    return optuna.trial.Trial(study, trial_id(study, number))


def mark(study, number: int, key: str, value) -> None:
    """Set a system attribute of trial `number` (Optuna keeps no public record of who beats a trial)."""
    study._storage.set_trial_system_attr(trial_id(study, number), key, value)


def beat(study, number: int) -> None:
    """Record a heartbeat of trial `number`."""
    study._storage.record_heartbeat(trial_id(study, number))
