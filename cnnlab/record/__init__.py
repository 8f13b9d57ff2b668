"""The experiment record: the one package that speaks to MLflow. The rest of cnnlab gets `Record`s, plain Python,
and never sees an MLflow object.

- vocabulary.py: the tags, metric names and states, and `Record` (no MLflow)
- location.py: where the store is; creating, checking and relocating its SQLite file
- readers.py: one reader protocol, a SQLite reader and MLflow's client, chosen once by the store's kind
- writer.py: every write, and `Run`, a run open for writing
- ids.py: log-ID numbering (T<n>, <sweep>/T<n>), assigned once
- liveness.py: which runs still have a process behind them; reaping the others (commands that write)
- store.py: `Store`, the facade of the calls commands and views need
"""

from .liveness import owner, owner_alive
from .location import file_lock, preload, redact_url, tracking_uri
from .store import Store
from .vocabulary import STATES, Metric, Record, Tag, parse_value, ui_link
from .writer import Run

__all__ = ["STATES", "Metric", "Record", "Run", "Store", "Tag", "file_lock", "owner", "owner_alive", "parse_value",
           "preload", "redact_url", "tracking_uri", "ui_link"]
