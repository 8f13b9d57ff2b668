"""The `cnnlab` command line. Heavy libraries are imported inside the commands that use them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .errors import CnnlabError, Diverged, Interrupted, signals_unwrapped

app = typer.Typer(
    help="Run, track and compare CNN experiments on CIFAR-10.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
)
data_app = typer.Typer(help="Bring CIFAR-10 into the local cache and inspect it.", no_args_is_help=True)
app.add_typer(data_app, name="data")
team_app = typer.Typer(help="PostgreSQL + an MLflow server on this machine, for sweeps across machines.",
                       no_args_is_help=True)
app.add_typer(team_app, name="team")
TEAM_DIR_HELP = "The team's directory: PostgreSQL's data, artifacts, secrets.env (default: runs/team)."

OVERRIDES_HELP = "Hydra overrides: key=value (e.g. arch=vgg_small dropout=0.5 lr=1e-3); see conf/config.yaml."
ROOT_HELP = "Cache directory (default: $CNNLAB_DATA_DIR, else ~/.cache/cnnlab)."


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors on the terminal (the log file gets all)."),
    show_config: bool = typer.Option(False, "--cfg", help="Print the resolved config and exit."),
) -> None:
    """Train one model: compose the config from conf/ plus OVERRIDES, train, log to MLflow.

    `cnnlab train resume=RUN` continues a KILLED run from its last whole epoch, in the same MLflow run.
    """
    from .config import compose

    overrides = overrides or []
    if show_config and not any(o.startswith("resume=") for o in overrides):
        from omegaconf import OmegaConf

        from .config import resolve, to_dict

        typer.echo(OmegaConf.to_yaml(to_dict(resolve(compose(overrides)))))
        return
    from .training import from_overrides

    result = from_overrides(overrides, quiet=quiet, announce=lambda text: typer.echo(text, err=True))
    _trained(result, quiet)


def _trained(result, quiet: bool) -> None:
    """The run's line (for scripts, on stdout) and, for a person, what to look at next."""
    typer.echo(f"id={result.id} test_acc={result.metrics['test_acc']:.4f} run_id={result.run_id} "
               f"run_dir={result.run_dir}")
    if not quiet:
        import shlex

        exp = shlex.quote(result.experiment)
        typer.echo(f"next: cnnlab report {result.id} --experiment {exp}   (its page: curves, confusion, mistakes)\n"
                   f"      cnnlab runs --experiment {exp}   (the log; `cnnlab ui` browses it)", err=True)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sweep(
    overrides: Optional[List[str]] = typer.Argument(
        None, show_default=False,
        help="Fixed overrides plus a search space in Hydra's grammar (lr=0.1,0.01 dropout='interval(0,0.5)' "
             "'lr=tag(log,interval(1e-4,1e-1))' depth='range(1,4)'); sweep=NAME loads conf/sweep/NAME.yaml."),
    strategy: Optional[str] = typer.Option(None, help="grid | random | optuna | list (default: grid)"),
    trials: Optional[int] = typer.Option(None, help="random/optuna: number of trials (default: 10)"),
    repeats: Optional[str] = typer.Option(None, help="Seeds per configuration (seed, seed+1, ...), or auto: 2 to "
                                                     "start, then more for the leading configurations until the "
                                                     "best is separated from the runner-up (or --max-repeats)."),
    max_repeats: Optional[int] = typer.Option(None, help="With --repeats auto: the most seeds a configuration "
                                                         "gets (default: 10)."),
    confidence: Optional[float] = typer.Option(None, help="Of the verdicts: --repeats auto's, and which "
                                                          "configurations the summary marks tied (default: 0.95)."),
    workers: int = typer.Option(1, help="Trials run at once, each in its own process (CPU threads are split)."),
    sampler: Optional[str] = typer.Option(None, help="optuna: tpe | random | cmaes | gp | qmc (default: tpe)"),
    pruner: Optional[str] = typer.Option(None, help="optuna: median | hyperband | none (default: none)"),
    metric: Optional[str] = typer.Option(None, help="Objective: val_acc | val_loss (default: val_acc)"),
    direction: Optional[str] = typer.Option(None, help="maximize | minimize (default: from the metric)"),
    sampler_seed: Optional[int] = typer.Option(None, help="Seed of the random/optuna sampler."),
    name: Optional[str] = typer.Option(None, help="Sweep name (the parent run); default: derived from the spec."),
    storage: Optional[str] = typer.Option(None, envvar="CNNLAB_STORAGE",
                                          help="Optuna storage URL (postgresql://...) shared across machines, its "
                                               "password in $PGPASSWORD; default: a journal file in the sweep's "
                                               "run directory."),
    join: Optional[str] = typer.Option(None, help="Join the running Optuna sweep NAME in --storage (another machine)."),
    force: bool = typer.Option(False, "--force", help="Run every trial again, even FINISHED ones."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the trial list and run nothing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live table; one line per finished trial."),
) -> None:
    """Run many trainings of one base config (grid, random, Optuna), resumable, as parent/child MLflow runs."""
    from .sweeps import Sweep, load_spec
    from .sweeps.display import print_plan, print_summary

    if join:
        from .sweeps.strategies.optuna_search import load_joined_spec

        if not storage:
            raise CnnlabError("--join NAME needs --storage URL (or $CNNLAB_STORAGE): the database the sweep was "
                              "started with.")
        spec = load_joined_spec(join, storage)
    else:
        from .sweeps.repeats import parse_repeats

        seeds, max_repeats = parse_repeats(repeats, max_repeats)
        spec = load_spec(overrides or [], strategy=strategy, trials=trials, repeats=seeds, max_repeats=max_repeats,
                         confidence=confidence, sampler=sampler, pruner=pruner, metric=metric, direction=direction,
                         seed=sampler_seed, name=name)
    runner = Sweep(spec, workers=workers, storage=storage, force=force, join=bool(join), quiet=quiet)
    if dry_run:
        planned = runner.plan()
        print_plan(runner.name, spec, planned, runner.strategy.describe())
        _print_estimate(runner, planned, workers)
        return
    result = runner.run()
    print_summary(spec, result)
    if result.outcomes and all(o.state == "FAILED" for o in result.outcomes):
        raise typer.Exit(1)


def _print_estimate(runner, planned, workers: int) -> None:
    """How long the sweep would take: from the store's past runs like its trials, or timed steps here."""
    from .record import Store
    from .sweeps.estimate import estimate, human
    from .sweeps.spec import Trial

    try:
        store = Store(runner.tracking_uri, create=False)
    except CnnlabError:  # no store yet: nothing to learn from
        store = None
    budget = None
    if not planned:  # a strategy that chooses as it goes: its base config, once per trial of its budget
        budget = getattr(runner.strategy, "budget", 1)
        planned = [Trial("base", runner.spec.fixed, {})]
    seconds, how = estimate(planned, store)
    seconds *= budget or 1
    text = f"estimated: ~{human(seconds)} one trial after another ({how})"
    if budget:
        text += f"; {budget} trials of the base config, before pruning"
    if workers > 1:
        text += f"; ~{human(seconds / workers)} with --workers {workers} if each worker has cores (or a GPU) of its own"
    typer.echo(text)


# the filters export-log and runs share (Typer reads the option from the annotation)
Experiments = Annotated[Optional[List[str]], typer.Option(
    "--experiment", help="MLflow experiment(s) to read (repeatable; default: cifar10).")]
SweepName = Annotated[Optional[str], typer.Option("--sweep", help="Only the trials of this sweep.")]
Statuses = Annotated[Optional[List[str]], typer.Option(
    "--status", help="Only runs in this state: FINISHED, FAILED, KILLED, PRUNED, RUNNING (repeatable).")]
Since = Annotated[Optional[str], typer.Option("--since", help="Only runs started on or after this date (2026-11-24).")]
Until = Annotated[Optional[str], typer.Option("--until", help="Only runs started on or before this date.")]
Archs = Annotated[Optional[List[str]], typer.Option("--arch", help="Only runs of this architecture (repeatable).")]
Baseline = Annotated[Optional[str], typer.Option(
    "--baseline", help="Run (log ID, name or run-ID prefix) that ARCHITECTURE CHANGES compares with (default: the sweep's base config, "
                       "else the previous run).")]
Sort = Annotated[Optional[str], typer.Option(
    "--sort", help="Order rows by: start (default), val_acc, test_acc, train_acc, lr, batch_size, epochs, wall_time, "
                   "params, flops.")]
Top = Annotated[Optional[int], typer.Option("--top", help="Only the first N rows (after sorting).")]


def _log(experiment, sweep, status, since, until, arch, baseline, sort, top, ui_url=None, curves=True):
    from .log import select

    return select(experiment, sweep, status, since, until, arch, baseline, sort, top, ui_url=ui_url, curves=curves,
                  announce=lambda text: typer.echo(text, err=True))


@app.command("export-log")
def export_log(
    path: Path = typer.Argument(..., help="Output file: .xlsx (the full workbook), .csv or .md (the log table)."),
    experiment: Experiments = None, sweep: SweepName = None, status: Statuses = None, since: Since = None,
    until: Until = None, arch: Archs = None, baseline: Baseline = None, sort: Sort = None, top: Top = None,
    ui_url: Optional[str] = typer.Option(None, help="Base URL of the MLflow UI for the run links (default: where "
                                                    "`cnnlab ui` last served this project, else :5000)."),
    force: bool = typer.Option(False, "--force", help="Replace PATH if it exists."),
) -> None:
    """Write the training log of the recorded runs, in the exercise's format (Excel, CSV or Markdown)."""
    from . import export

    export.check_destination(path, force)  # before reading anything
    from .ui import last_url

    log = _log(experiment, sweep, status, since, until, arch, baseline, sort, top, ui_url=ui_url or last_url())
    export.write(log, path, force=force)
    typer.echo(f"wrote {len(log.table)} run(s) to {path}")


@app.command()
def runs(
    experiment: Experiments = None, sweep: SweepName = None, status: Statuses = None, since: Since = None,
    until: Until = None, arch: Archs = None, baseline: Baseline = None, sort: Sort = None, top: Top = None,
    only_changed: bool = typer.Option(False, "--only-changed", help="Only the columns whose values vary."),
    fmt: Optional[str] = typer.Option(None, "--format", help="table | tsv | csv | md (default: a table on a "
                                                             "terminal, tab-separated rows when piped)."),
) -> None:
    """The training log in the terminal (every column, untruncated, when piped)."""
    import os

    from rich.console import Console

    from . import render
    from .log import changed_columns

    console = Console()
    fmt = fmt or ("table" if console.is_terminal else "tsv")
    if fmt not in render.FORMATS:
        raise CnnlabError(f"--format {fmt}: valid formats are {', '.join(render.FORMATS)}.")
    log = _log(experiment, sweep, status, since, until, arch, baseline, sort, top, curves=False)
    shown = log.short_columns()
    if only_changed:
        keep = set(changed_columns(log))
        shown = [c for c in shown if c.header in keep]
    values = [[row[c.header] for c in shown]
              for row in (dict(zip(log.table.columns, row)) for row in log.table.itertuples(index=False))]
    if fmt != "table":
        typer.echo(render.lines(fmt, shown, values))
        return
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)  # asked for a table in a pipe: room for it
    rows = [[c.text(v) for c, v in zip(shown, row)] for row in values]
    console.print(render.table(shown, rows, title=f"{len(log.rows)} run(s)", best=log.best, width=console.width))
    for code, what in log.legend.itertuples(index=False):  # what DATA SETS' and TEST SPLIT's codes stand for
        console.print(f"{code} = {what}", highlight=False, markup=False)


@app.command()
def reproduce(
    run: str = typer.Argument(..., help="The run: its log ID (T3, exercise/T3), run name, or run-ID prefix."),
    experiment: Experiments = None,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-epoch output."),
) -> None:
    """Train a FINISHED run's recorded config again as a new run linked to it, and say whether the result is
    identical, or what differs (commit, packages, data, machine) and by how much the metrics moved."""
    from .reproduction import reproduce as again

    for line in again(run, experiment, quiet=quiet).words():
        typer.echo(line)


@app.command()
def evaluate(
    run: str = typer.Argument(..., help="The run: its log ID (T3, exercise/T3), run name, or run-ID prefix."),
    overrides: Optional[List[str]] = typer.Argument(None, help="targets=[gaussian_noise,cifar10_1,cifar10_c,stl10,...] "
                                                                "severity=3 (of the corruptions)"),
) -> None:
    """Evaluate a recorded run's best checkpoint on target sets (shifted test sets, real target datasets) and log
    the scores to it."""
    from .corruptions import NAMES
    from .record import Store
    from .target_data import OFFICIAL
    from .targets import evaluate_run

    targets, severity = list(NAMES), 3
    for item in overrides or []:
        key, _, value = item.partition("=")
        if key == "targets":
            targets = [t.strip() for t in value.strip("[]").split(",") if t.strip()]
        elif key == "severity" and value.isdigit() and 1 <= int(value) <= 5:
            severity = int(value)
        else:
            raise CnnlabError(f"Bad argument {item!r}: expected targets=[name,...] ({', '.join(NAMES + tuple(OFFICIAL))}"
                              ", or an imported one) or severity=1..5.")
    store = Store(create=False)
    record = store.find(run)
    typer.echo(f"evaluating {record.experiment} {record.id} (run {record.run_id}, {record.name})")
    for name, acc in evaluate_run(record, targets, severity, store).items():
        typer.echo(f"{name} {acc:.4f}")


@app.command()
def report(
    target: str = typer.Argument(..., help="A run (log ID such as T3 or exercise/T3, run name, run-ID prefix), a "
                                           "sweep's name, or an experiment's name."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The HTML file (default: reports/<name>.html)."),
    experiment: Experiments = None,
) -> None:
    """One self-contained HTML page of a run (curves, confusion, mistakes, filters, feature maps, cost, config)
    or of a sweep or experiment (history, parameters, importances, configs, Pareto front, log)."""
    from .reporting import report as write_report

    found, path = write_report(target, out, experiment)
    what = f"{found.record.experiment} {found.record.id} (run {found.record.run_id})" if found.kind == "run" \
        else f"{found.kind} {found.name} ({len(found.records or [])} runs)"
    typer.echo(f"report of {what}: {path}")


@app.command()
def compare(
    runs: List[str] = typer.Argument(..., help="Two runs or configurations or more: log IDs (T0 T3 exercise/T7), "
                                               "run names, run-ID prefixes, or a configuration's values in quotes "
                                               "('dropout=0.5 lr=0.01')."),
    html: bool = typer.Option(False, "--html", help="Write a page with the curves overlaid instead."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="With --html: the file (default: "
                                                                "reports/compare-<ids>.html)."),
    experiment: Experiments = None,
    sweep: SweepName = None,
    confidence: float = typer.Option(0.95, help="Of the verdict's interval; a difference is shown when p < 1 - this."),
) -> None:
    """Runs or configurations side by side: what differs, scores, curves (sparklines; --html: overlaid), and
    whether the difference in test accuracy is real (over each configuration's seeds: Welch's t-test, paired by
    seed when both ran the same seeds)."""
    from . import comparison as comparing
    from .record import Store

    if not 0.5 <= confidence < 1:
        raise CnnlabError(f"--confidence {confidence}: give a level between 0.5 and 1 (0.95: 95%).")
    found = comparing.gather(Store(create=False), runs, experiment, sweep, confidence)
    if not html:
        comparing.print_terminal(found)
        return
    from .pages import write
    from .schema import project_root

    path = write(comparing.page(found), out or project_root() / "reports" / comparing.default_name(found))
    typer.echo(f"compared {' '.join(found.labels)}: {path}")


@app.command()
def ui(
    port: int = typer.Option(5000, help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; anything but 127.0.0.1 exposes your runs "
                                               "to the network."),
    experiment: Optional[str] = typer.Option(None, help="Experiment whose runs table the printed URL opens "
                                                         "(default: the one used most recently)."),
) -> None:
    """Start the MLflow UI on this project's store and print the URL of the experiment's runs table."""
    from .ui import serve

    raise typer.Exit(serve(port=port, host=host, experiment=experiment))


@team_app.command("up")
def team_up(
    directory: Optional[Path] = typer.Option(None, "--dir", help=TEAM_DIR_HELP),
    host: str = typer.Option("127.0.0.1", help="Interface both servers bind; anything but loopback lets other "
                                               "machines connect (with the passwords)."),
    port: int = typer.Option(5001, help="The MLflow server's port."),
    pg_port: int = typer.Option(5433, help="PostgreSQL's port."),
) -> None:
    """Start PostgreSQL and an MLflow server (basic auth, artifacts served) until Ctrl-C or `team down`; print
    what workers need."""
    from .team import up

    raise typer.Exit(up(directory, host=host, port=port, pg_port=pg_port))


@team_app.command("status")
def team_status(directory: Optional[Path] = typer.Option(None, "--dir", help=TEAM_DIR_HELP)) -> None:
    """Is the team up, do its servers answer, where are its credentials."""
    from .team import status

    typer.echo(status(directory))


@team_app.command("down")
def team_down(directory: Optional[Path] = typer.Option(None, "--dir", help=TEAM_DIR_HELP)) -> None:
    """Stop `cnnlab team up` and both its servers (runs, trials and artifacts are kept)."""
    from .team import down

    typer.echo(down(directory))


@app.command()
def models() -> None:
    """The architectures: parameters, FLOPs per 32x32 image, the knobs each takes, what it is."""
    from rich.console import Console
    from rich.table import Table

    from .describe import human, model_table

    table = Table(title="architectures (3x32x32 input, 10 classes; recipes in conf/arch/<name>.yaml)")
    for col in ("arch", "params", "FLOPs/img", "knobs", "description"):
        table.add_column(col, justify="right" if col in ("params", "FLOPs/img") else "left",
                         overflow="fold", no_wrap=col == "arch")
    for row in model_table():
        knobs = ", ".join(row["knobs"] + [f"arch.{p}" for p in row["arch_params"]])
        table.add_row(row["arch"], human(row["params"]), human(row["flops"]), knobs, row["description"])
    Console().print(table)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def describe(
    args: Optional[List[str]] = typer.Argument(
        None, show_default=False,
        help="arch=NAME plus image_size=, num_classes=, in_channels= and knobs (dropout=0.5, arch.growth_rate=24)."),
) -> None:
    """The per-layer table of the lectures: output shape, activations and their memory, parameters, FLOPs.

    Describes the architecture as defined (its builder's defaults), not a training recipe.
    """
    from rich.console import Console
    from rich.table import Table

    from .describe import BYTES, build, human, layers, parse_args

    name, inputs, knobs = parse_args(args or [])
    size, in_channels = inputs.get("image_size", 32), inputs.get("in_channels", 3)
    rows = layers(build(name, inputs, knobs), in_channels, size)
    title = (f"{name}: {in_channels}x{size}x{size} input, {inputs.get('num_classes', 10)} classes"
             + (f", {' '.join(f'{k}={v}' for k, v in knobs.items())}" if knobs else ""))
    table = Table(title=title)
    for col in ("layer", "type", "output", "activations", "memory", "params", "FLOPs"):
        table.add_column(col, justify="left" if col in ("layer", "type") else "right")
    for r in rows:
        table.add_row(r.name, r.label, "x".join(map(str, r.shape)), f"{r.activations:,}",
                      human(r.activations * BYTES) + "B", f"{r.params:,}", human(r.flops))
    params, acts, flops = (sum(getattr(r, k) for r in rows) for k in ("params", "activations", "flops"))
    table.add_section()
    table.add_row("total", "", "", f"{acts:,}", human(acts * BYTES) + "B", f"{params:,}", human(flops))
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(140, console.width))
    console.print(table)
    console.print(f"parameters: {params:,} = {human(params * BYTES)}B (x{BYTES} bytes, fp32); "
                  f"activations: {acts:,} per image = {human(acts * BYTES)}B forward; "
                  f"FLOPs: {human(flops)} per image ({human(flops / 2)} multiply-adds)")


@app.command()
def init(directory: str = typer.Argument(".", help="The project directory (default: here).")) -> None:
    """Make DIRECTORY a cnnlab project: conf/ for your own presets and sweeps (layered over cnnlab's), runs/."""
    from .project import init_project

    for line in init_project(directory):
        typer.echo(line)


@data_app.command("import")
def data_import(
    path: Path = typer.Argument(..., help="Image folder (dir, .tar, .tar.gz, .zip) or cifar-10-python.tar.gz."),
    root: Optional[str] = typer.Option(None, help=ROOT_HELP),
    force: bool = typer.Option(False, "--force", help="Replace a cache whose classes differ from this copy's, or "
                                                      "that holds far more images; with --target, replace that "
                                                      "target's cache."),
    target: Optional[str] = typer.Option(None, "--target", help="Import a target dataset instead, from its official "
                                                                "files: cifar10_1, cifar10_c, stl10, svhn; any other "
                                                                "name: an image folder <split>/<class>/*."),
) -> None:
    """Decode a local copy of CIFAR-10 (or, with --target, of a target dataset) once into the cache."""
    from .data import data_root, skipped_text, import_dataset

    if target:
        from .target_data import import_target

        meta = import_target(target, path, data_root(root), force=force)
        parts = ", ".join(a for a in meta["arrays"] if a.endswith("_x") or a == "labels")
        typer.echo(f"imported target {target} ({len(meta['classes'])} classes; {parts}) from {path} into "
                   f"{data_root(root) / 'targets' / target}")
        return
    info = import_dataset(path, root, force=force)
    if info["skipped"]:
        typer.echo(f"warning: {skipped_text(info['skipped'])} (links, special files and paths that leave the "
                   "folder are never read)", err=True)
    typer.echo(f"imported {info['train']:,} train + {info['test']:,} test images, {len(info['classes'])} classes, "
               f"from {info['source']} into {info['cache']} in {info['seconds']} s")


@data_app.command("download")
def data_download(
    target: str = typer.Argument(..., help="An official target dataset: cifar10_1, cifar10_c, stl10, svhn."),
    root: Optional[str] = typer.Option(None, help=ROOT_HELP),
    force: bool = typer.Option(False, "--force", help="Replace the target's cache if it has one."),
) -> None:
    """Download an official target dataset (its checksum verified) into the cache, to evaluate on or train on."""
    from .data import data_root
    from .target_data import OFFICIAL, cached, fetch

    if target not in OFFICIAL:
        raise CnnlabError(f"{target!r} is not an official target: valid {', '.join(OFFICIAL)}. Your own data: "
                          f"`cnnlab data import --target {target} FOLDER`.")
    if cached(data_root(root), target) is not None and not force:
        raise CnnlabError(f"Target {target} is already in the cache ({data_root(root) / 'targets' / target}); pass "
                          "--force to download it again.")
    fetch(data_root(root), target, force=force)
    typer.echo(f"downloaded target {target} into {data_root(root) / 'targets' / target}")


@data_app.command("info")
def data_info(root: Optional[str] = typer.Option(None, help=ROOT_HELP)) -> None:
    """Show what the cache holds."""
    from .data import CACHE_NAME, cache_info, data_root

    info = cache_info(root)
    if info is None:
        typer.echo(f"no cache at {data_root(root) / CACHE_NAME}: run `cnnlab data import PATH` "
                   "(or `cnnlab train`, which downloads CIFAR-10 when online)")
        raise typer.Exit(1)
    from .target_data import cached, present

    shape = "x".join(str(v) for v in info["image_shape"])
    found = {name: cached(data_root(root), name) for name in present(data_root(root))}
    typer.echo(
        f"cache     {info['cache']} ({info['bytes'] / 1e6:.0f} MB)\n"
        f"source    {info['source']}\n"
        f"sha256    {info['sha256'] or '-'}\n"
        f"imported  {info['imported']}\n"
        f"images    {info['train']:,} train, {info['test']:,} test, {shape}\n"
        f"classes   {', '.join(info['classes'])}\n"
        f"mean/std  {', '.join(f'{v:.4f}' for v in info['mean'])} / {', '.join(f'{v:.4f}' for v in info['std'])}\n"
        f"targets   {'; '.join(f'{n} ({len(t.classes)} classes)' for n, t in found.items()) or 'none imported'}"
    )


def _interrupted(signum, frame):
    raise Interrupted(signum)


def main() -> None:
    import signal
    import threading

    # Ctrl-C before a command installs its own handling: click would turn a KeyboardInterrupt into "Aborted!" and
    # exit 1; an Interrupted passes through it and ends the command with 130, as Ctrl-C anywhere else does
    previous = signal.getsignal(signal.SIGINT)
    ours = previous is signal.default_int_handler and threading.current_thread() is threading.main_thread()
    if ours:
        signal.signal(signal.SIGINT, _interrupted)
    try:
        _run()
    finally:
        if ours:
            signal.signal(signal.SIGINT, previous)


def _run() -> None:
    try:
        with signals_unwrapped():
            app()
    except CnnlabError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Diverged as exc:
        typer.echo(f"error: training diverged: {exc}", err=True)
        sys.exit(1)
    except PermissionError as exc:
        typer.echo(f"error: permission denied: cannot write {exc.filename or exc}. Make it writable, or point "
                   "$CNNLAB_RUNS_DIR / $CNNLAB_DATA_DIR elsewhere; nothing recorded was changed.", err=True)
        sys.exit(2)
    except Interrupted as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        from .errors import storage_failure
        from .schema import runs_dir

        why = storage_failure(exc)
        if not why:
            raise
        fix = "Free some space" if why == "full" else "Make it writable (or point $CNNLAB_RUNS_DIR elsewhere)"
        typer.echo(f"error: the disk holding {runs_dir()} is {why} ({exc}): {fix}, then run the command again. A run "
                   "this left RUNNING is marked KILLED by the next command, and `cnnlab train resume=ID` continues it "
                   "from its last whole epoch.", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
