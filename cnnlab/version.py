"""cnnlab's version, in a module of its own: runs record it, and the package's __init__ re-exports it."""

__version__ = "0.1.0"
