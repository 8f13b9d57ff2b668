"""The `cnnlab` command line. Heavy libraries are imported inside the commands that use them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import CnnlabError, Diverged, Interrupted

app = typer.Typer(
    help="Run, track and compare CNN experiments on CIFAR-10.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Bring CIFAR-10 into the local cache and inspect it.", no_args_is_help=True)
app.add_typer(data_app, name="data")

OVERRIDES_HELP = "Hydra overrides: key=value (e.g. arch=vgg_small dropout=0.5 lr=1e-3); see conf/config.yaml."
ROOT_HELP = "Cache directory (default: $CNNLAB_DATA_DIR, else ~/.cache/cnnlab)."


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors on the terminal (the log file gets all)."),
    show_config: bool = typer.Option(False, "--cfg", help="Print the resolved config and exit."),
) -> None:
    """Train one model: compose the config from conf/ plus OVERRIDES, train, log to MLflow."""
    from .config import compose

    overrides = overrides or []
    cfg = compose(overrides)
    if show_config:
        from omegaconf import OmegaConf

        from .config import resolve, to_dict

        typer.echo(OmegaConf.to_yaml(to_dict(resolve(cfg))))
        return
    from .train import train as run_training

    result = run_training(cfg, overrides, quiet=quiet)
    typer.echo(f"test_acc={result.metrics['test_acc']:.4f} run_id={result.run_id} run_dir={result.run_dir}")


@data_app.command("import")
def data_import(
    path: Path = typer.Argument(..., help="Image folder (dir, .tar, .tar.gz, .zip) or cifar-10-python.tar.gz."),
    root: Optional[str] = typer.Option(None, help=ROOT_HELP),
) -> None:
    """Decode a local copy of CIFAR-10 once into the uint8 cache that training loads."""
    from .data import import_dataset

    info = import_dataset(path, root)
    typer.echo(f"imported {info['train']:,} train + {info['test']:,} test images, {len(info['classes'])} classes, "
               f"from {info['source']} into {info['cache']} in {info['seconds']} s")


@data_app.command("info")
def data_info(root: Optional[str] = typer.Option(None, help=ROOT_HELP)) -> None:
    """Show what the cache holds."""
    from .data import CACHE_NAME, cache_info, data_root

    info = cache_info(root)
    if info is None:
        typer.echo(f"no cache at {data_root(root) / CACHE_NAME}: run `cnnlab data import PATH` "
                   "(or `cnnlab train`, which downloads CIFAR-10 when online)")
        raise typer.Exit(1)
    shape = "x".join(str(v) for v in info["image_shape"])
    typer.echo(
        f"cache     {info['cache']} ({info['bytes'] / 1e6:.0f} MB)\n"
        f"source    {info['source']}\n"
        f"sha256    {info['sha256'] or '-'}\n"
        f"imported  {info['imported']}\n"
        f"images    {info['train']:,} train, {info['test']:,} test, {shape}\n"
        f"classes   {', '.join(info['classes'])}\n"
        f"mean/std  {', '.join(f'{v:.4f}' for v in info['mean'])} / {', '.join(f'{v:.4f}' for v in info['std'])}"
    )


def main() -> None:
    try:
        app()
    except CnnlabError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Diverged as exc:
        typer.echo(f"error: training diverged: {exc}", err=True)
        sys.exit(1)
    except Interrupted as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
