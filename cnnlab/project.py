"""`cnnlab init`: a directory becomes a cnnlab project.

A project holds its own `conf/` (its config.yaml and any presets and sweeps of its own, layered over
the ones cnnlab ships: a file of the same name replaces cnnlab's) and `runs/` (the store and the run
directories). Commands run anywhere inside it find it (schema.project_root).
"""

from __future__ import annotations

import shutil
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


def init_project(directory: Path) -> List[str]:
    """Scaffold `directory`; refuses to replace a project's config.yaml. Returns what it did, as lines."""
    directory = Path(directory).resolve()
    conf = directory / "conf"
    if (conf / "config.yaml").exists():
        raise CnnlabError(f"{directory} is a cnnlab project already ({conf / 'config.yaml'} exists); nothing changed.")
    for sub in ("arch", "recipe", "sweep"):
        (conf / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(package_conf() / "config.yaml", conf / "config.yaml")
    (conf / "README.md").write_text(README.format(shipped=package_conf()))
    for sub in ("runs", "reports"):
        (directory / sub).mkdir(exist_ok=True)
        (directory / sub / ".gitkeep").touch()
    ignore = directory / ".gitignore"
    if not ignore.exists():
        ignore.write_text(GITIGNORE)
    return [f"made {directory} a cnnlab project: conf/ (your configs, over cnnlab's), runs/, reports/",
            "next: cnnlab data import PATH   (or let `cnnlab train` download CIFAR-10)",
            "      cnnlab train              (from anywhere inside the project)"]
