"""The one exception type for mistakes a user can fix.

The CLI prints a CnnlabError as one paragraph and exits with code 2; anything else is a bug
and keeps its traceback.
"""

from contextlib import contextmanager


class CnnlabError(Exception):
    """A bad input: what was wrong and what is valid, in one paragraph."""


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the run is FAILED."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM arrived; `exit_code` is 130 or 143 (128 + signal number)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.exit_code = 128 + signum


class Pruned(Exception):
    """A sweep's pruner stopped the trial early: the run ends KILLED, tagged cnnlab.state=PRUNED."""


def causes(exc: BaseException):
    """`exc`, then what caused it (its cause, else the exception it was raised while handling), each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def interrupt_in(exc: BaseException):
    """The Ctrl-C or SIGTERM behind `exc`, or None. A signal can cut a library's code half-done; its cleanup then
    fails (OmegaConf: "'NoneType' object has no attribute ..."), and the library wraps that error in one of its
    own, which holds the interrupt only as context. Such an error is the interrupt, not a bad input or a bug."""
    return next((e for e in causes(exc) if isinstance(e, (Interrupted, KeyboardInterrupt))), None)


@contextmanager
def signals_unwrapped():
    """Inside the block, an error that holds an interrupt (interrupt_in) is raised as that interrupt: the
    entry points (the CLI, the notebook API) then end it as the signal it was."""
    try:
        yield
    except Exception as exc:
        raise interrupt_in(exc) or exc


def storage_failure(exc: BaseException) -> str:
    """What `exc` (or what caused it) says of the disk under the record: 'full', 'read-only', or ''."""
    import errno

    for exc in causes(exc):
        text = str(exc).lower()
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "database or disk is full" in text:
            return "full"
        if getattr(exc, "errno", None) == errno.EROFS or "readonly database" in text or "read-only file system" in text:
            return "read-only"
    return ""
