"""`cnnlab init`: a directory becomes a cnnlab project.

A project holds its own `conf/` (its config.yaml and any presets and sweeps of its own, layered over
the ones cnnlab ships: a file of the same name replaces cnnlab's) and `runs/` (the store and the run
directories). Commands run anywhere inside it find it (schema.project_root).
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from .errors import CnnlabError
from .schema import package_conf

README = """# This project's configs

cnnlab composes its configs from here first, then from the ones it ships ({shipped}).
A file here with the same name as one of cnnlab's replaces it; a new name adds a preset.

- `config.yaml`: the defaults of every run in this project (a copy of cnnlab's; edit freely).
- `arch/<name>.yaml`: an architecture's recipe (`cnnlab train arch=<name>`); `arch.name` picks
  a registered architecture (`cnnlab models` lists them).
- `recipe/<name>.yaml`: an override bundle (`recipe=<name>`), `# @package _global_`.
- `sweep/<name>.yaml`: a named sweep (`cnnlab sweep sweep=<name>`).
"""

GITIGNORE = "runs/*\n!runs/.gitkeep\nreports/*\n!reports/.gitkeep\n"


def init_project(directory: str) -> List[str]:
    """Scaffold `directory`; refuses to replace a project's config.yaml and never overwrites a file that is there
    already. Returns what it did, as lines."""
    if not str(directory).strip():
        raise CnnlabError("cnnlab init was given an empty directory name (an unset variable?). Name the project's "
                          "directory, or `.` for the current one.")
    directory = Path(directory).expanduser().resolve()
    conf = directory / "conf"
    if directory.exists() and not directory.is_dir():
        raise CnnlabError(f"{directory} is a file, not a directory: cnnlab init makes a directory a project. "
                          "Give a new or an existing directory.")
    if (conf / "config.yaml").exists():
        raise CnnlabError(f"{directory} is a cnnlab project already ({conf / 'config.yaml'} exists); nothing changed.")
    try:
        kept = _scaffold(directory, conf)
    except OSError as exc:
        raise CnnlabError(f"Could not make {directory} a cnnlab project: {exc.strerror} ({exc.filename}). Choose a "
                          "directory you can write to.") from None
    return [f"made {directory} a cnnlab project: conf/ (your configs, over cnnlab's), runs/, reports/",
            *[f"kept your {path} (not overwritten)" for path in kept],
            "next: cnnlab data import PATH   (or let `cnnlab train` download CIFAR-10)",
            "      cnnlab train              (from anywhere inside the project)"]


def _scaffold(directory: Path, conf: Path) -> List[Path]:
    """The project's folders and files; a file already there is kept. Returns the files kept."""
    for sub in ("arch", "recipe", "sweep"):
        (conf / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("runs", "reports"):
        (directory / sub).mkdir(exist_ok=True)
        (directory / sub / ".gitkeep").touch()
    files = {conf / "config.yaml": (package_conf() / "config.yaml").read_text(),
             conf / "README.md": README.format(shipped=package_conf()), directory / ".gitignore": GITIGNORE}
    kept = []
    for path, text in files.items():
        try:
            with open(path, "x") as f:  # created only where nothing is: never replaces a user's file
                f.write(text)
        except FileExistsError:
            kept.append(path)
    return [p for p in kept if p.name != ".gitignore"]
