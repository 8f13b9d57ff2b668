"""Files cnnlab writes for people: with the permissions any other program's files get here."""

from __future__ import annotations

import os


def umask_mode() -> int:
    """The mode a new file gets under this process's umask (0644 under umask 022). tempfile.mkstemp makes its files
    0600: a file written aside that way and moved into place is given this mode first."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
