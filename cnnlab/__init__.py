"""cnnlab: run, track and compare CNN experiments on CIFAR-10.

From Python or a notebook: cnnlab.train(...), cnnlab.sweep(...), cnnlab.runs(), cnnlab.report(...),
cnnlab.compare(...), cnnlab.reproduce(...) (cnnlab/api.py).
"""

from .version import __version__  # noqa: F401

API = ("train", "sweep", "runs", "report", "compare", "reproduce")


def __getattr__(name: str):
    """The API's functions, imported on first use (`cnnlab --help` and the workers never load them)."""
    if name in API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
