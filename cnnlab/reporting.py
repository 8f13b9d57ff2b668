"""`cnnlab report`: a run's, a sweep's or an experiment's pictures on one self-contained HTML page.

A run's page: learning curves, confusion and per-class accuracy, its most confident mistakes, the first
layer's filters beside the lectures' edge detectors, feature maps block by block, the architecture's cost
table and its config against the baseline. A sweep's or an experiment's page: the optimisation history,
every trial's curve, parallel coordinates and parameter importances (Optuna's), mean ± std per config,
accuracy against cost with the Pareto front, and the training log.

The record is read through the store, the summary and the log (store.py, summary.py, log.py); whatever needs
the model comes from look.py. What a run lacks (no checkpoint, no epoch, still running) is said on the page
and the rest is shown.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from . import figures, look, pages
from .errors import CnnlabError
from .pages import esc, image, missing, section, table
from .record import Metric, Record, Store, Tag, parse_value

CURVES = (*Metric.CURVES, Metric.LR)
HEADLINE = Metric.HEADLINE


@dataclass
class Target:
    """What `cnnlab report NAME` names: a run, or a group of runs (a sweep's trials, an experiment's runs)."""

    kind: str  # run | sweep | experiment
    name: str
    record: Optional[Record] = None  # the run, or the sweep's parent run
    records: Optional[List[Record]] = None  # a group's runs, oldest first


def resolve(store: Store, ref: str, experiments: Optional[List[str]] = None) -> Target:
    """A run (log ID, run name, run-ID prefix), a sweep (its name: its parent run's log ID) or an experiment
    (its name, when no run or sweep is called so)."""
    try:
        record = store.find(ref, experiments)
    except CnnlabError as exc:
        known = store.experiments()
        if not str(exc).startswith("No run"):
            raise  # it names several runs: the error lists them
        if ref in known:
            return Target("experiment", ref, records=store.runs([ref]))
        raise CnnlabError(f"Nothing called {ref!r} in {store.uri}: give a run (its log ID as `cnnlab runs` prints "
                          "it, T3 or exercise/T3; its run name; a prefix of its run ID), a sweep's name, or an "
                          f"experiment's name ({', '.join(sorted(known)) or 'none yet'}).") from None
    if record.is_sweep_parent:
        name = record.tags[Tag.SWEEP_PARENT]
        return Target("sweep", name, record, store.runs([record.experiment], sweep=name))
    return Target("run", record.id, record)


def default_path(target: Target) -> Path:
    """reports/<ID>.html (a trial's ID with '-' for '/'), prefixed with the experiment's name outside cifar10."""
    from .schema import project_root, safe_name

    experiment = (target.record.experiment if target.record else target.name)
    name = target.name.replace("/", "-")
    if target.kind != "experiment" and experiment != "cifar10":
        name = f"{experiment}-{name}"
    return project_root() / "reports" / f"{safe_name(name)}.html"


def when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


def state_line(record: Record) -> str:
    text = record.state
    if record.reason:
        text += f" ({record.reason})"
    if record.state == "RUNNING":
        text += ": still training; this page shows the epochs recorded so far"
    return text


# ---------------------------------------------------------------- one run


def run_page(store: Store, record: Record, ui_url: str) -> str:
    from .log import describe_changes, reference
    from .record import ui_link

    history = store.histories([record.run_id], CURVES)[record.run_id]
    m = record.metrics
    epochs = len(history.get("train_loss", {}))
    headline = [(k, m.get(k)) for k in HEADLINE if m.get(k) is not None]
    facts = table(None, [["state", state_line(record)], ["experiment", record.experiment],
                             ["run name", record.name], ["MLflow run", record.run_id],
                             ["started", when(record.start_time)],
                             ["epochs recorded", f"{epochs} of {record.params.get('epochs', '?')}"],
                             *[[k, pages.metric(k, v)] for k, v in headline]])
    link = f'<p><a href="{esc(ui_link(ui_url, record.experiment_id, record.run_id))}">Open in the MLflow UI</a></p>'
    sections = [section("The run", facts, link)]
    sections.append(section("Learning curves",
                            image(figures.embed(figures.learning_curves(history)), "learning curves") if epochs
                            else missing("No epoch was recorded: the run ended (or is) before its first epoch.")))
    try:  # what needs the model or the test images says so once, here, and briefly in its section
        loaded = look.load(record, store)
        absent = "" if loaded.x_test is not None else "no test images (see the top)"
        if absent:
            sections[0] += missing(f"No test images, so no mistakes or feature maps: {loaded.missing_data}")
    except CnnlabError as exc:
        loaded, absent = None, "no checkpoint (see the top)"
        sections[0] += missing(f"The model: {exc}.")
    if Tag.SOURCE_RUN in record.tags:
        sections.append(_source_section(store, record, history))
    sections.append(_classes_section(store, record, loaded, absent))
    sections.append(_filters_section(loaded, absent))
    sections.append(_feature_maps_section(loaded, absent))
    sections.append(_cost_section(record, loaded, absent))
    label, base = reference(store, record)
    sections.append(_config_section(record, label, base, describe_changes))
    subtitle = f"{record.experiment} · {record.state} · started {when(record.start_time)}"
    return pages.page(f"Run {record.id}", subtitle, sections)


def _source_section(store: Store, record: Record, history) -> str:
    """A transfer run's source beside it: what it is, both runs' curves, and the test accuracy per class of this
    run's data next to the source's on the classes they share."""
    try:
        source = store.get(record.tags[Tag.SOURCE_RUN])
    except Exception:  # MLflow raises its own types for a run that is gone
        return section("Source run", missing(f"The source run {record.tags.get(Tag.SOURCE)} is no longer in the "
                                             "store."))
    facts = table(None, [["source", f"{record.tags[Tag.SOURCE]} ({source.params.get('arch.name')})"],
                         ["its data", record.tags.get(Tag.SOURCE_DATA, "?")],
                         ["transfer", record.tags.get(Tag.TRANSFER, "?")], ["head", record.tags.get(Tag.HEAD, "?")],
                         ["its test_acc", pages.metric(Metric.TEST_ACC, source.metrics.get(Metric.TEST_ACC))],
                         ["this run's test_acc", pages.metric(Metric.TEST_ACC, record.metrics.get(Metric.TEST_ACC))]])
    curves = {f"{record.id} (this run)": history,
              f"{record.tags[Tag.SOURCE]} (source)": store.histories([source.run_id], CURVES)[source.run_id]}
    figure = image(figures.embed(figures.overlaid_curves(curves)), "this run's and its source's curves")
    classes = [k[len("test_acc_"):] for k in record.metrics if k.startswith("test_acc_")]
    rows = [[c, pages.metric("acc", record.metrics[f"test_acc_{c}"]),
             pages.metric("acc", source.metrics.get(f"test_acc_{c}")) if f"test_acc_{c}" in source.metrics else "-"]
            for c in classes]
    per_class = table(["class", "this run", "the source (its own test set)"], rows, numeric=[1, 2]) if rows else ""
    return section("Source run", facts, figure, per_class)


def _recorded_confusion(store: Store, record: Record) -> Optional[Tuple[List[str], List[List[int]]]]:
    """The test confusion matrix the run recorded (confusion.csv), as (classes, rows); None if it has none."""
    path = (record.run_dir or Path("/nonexistent")) / "confusion.csv"
    if not path.exists() and record.state == "FINISHED":  # a finished run logged it as an artifact too
        path = store.download(record.run_id, "confusion.csv") or path
    if not path.exists():
        return None
    lines = [line.split(",") for line in path.read_text().strip().splitlines()]
    return lines[0][1:], [[int(v) for v in line[1:]] for line in lines[1:]]


def _classes_section(store: Store, record: Record, loaded, absent: str) -> str:
    parts = []
    recorded = _recorded_confusion(store, record)
    predictions = look.predict(loaded) if loaded is not None and loaded.x_test is not None else None
    if recorded is not None:
        classes, matrix = recorded
        parts.append(image(figures.embed(figures.confusion(matrix, classes)), "confusion matrix"))
    elif predictions is not None:
        parts.append(missing(f"The run recorded no confusion matrix ({record.state.lower()}); this one is the best "
                             f"checkpoint's (epoch {loaded.epoch}) on {predictions.n:,} test images sampled across the "
                             "classes."))
        parts.append(image(figures.embed(figures.confusion(predictions.confusion.tolist(), loaded.classes,
                                                           f"{predictions.n:,} sampled test images")), "confusion"))
    else:
        parts.append(missing(f"No confusion matrix: the run recorded none, and there is {absent}."))
    accuracies = {k[len("test_acc_"):]: v for k, v in record.metrics.items() if k.startswith("test_acc_")}
    if accuracies:
        parts.append(image(figures.embed(figures.per_class(accuracies)), "per-class accuracy"))
    if predictions is not None and predictions.mistakes:
        cells = []
        for index, true, pred, confidence in predictions.mistakes:
            thumb = figures.image_uri(loaded.x_test[index].permute(1, 2, 0).numpy())
            alt = f"test image {int(loaded.index[index])}"
            cells.append(f'<figure>{image(thumb, alt)}<figcaption>{esc(loaded.classes[true])} → '
                         f"<b>{esc(loaded.classes[pred])}</b> {confidence:.0%}</figcaption></figure>")
        parts.append(f"<h3>Most confident mistakes</h3><p>The best checkpoint (epoch {loaded.epoch}) on "
                     f"{predictions.n:,} test images sampled across the classes: true class → predicted, with the "
                     "model's confidence.</p>"
                     f'<div class="grid">{"".join(cells)}</div>')
    elif predictions is None:
        parts.append(missing(f"No mistakes shown: {absent}."))
    return section("Classes", *parts)


def _filters_section(loaded, absent: str) -> str:
    if loaded is None:
        return section("First-layer filters", missing(f"No filters: {absent}."))
    weights, name = look.filters(loaded.model)
    if weights is None:
        return section("First-layer filters", missing("This architecture has no convolution."))
    found = look.matches(weights)
    k = weights.shape[-1]
    rows = [[m.kernel, m.filter, f"{m.similarity:+.3f}"] for m in found]
    note = (f"Layer {name}: {weights.shape[0]} filters of {weights.shape[1]}x{k}x{k}, each scaled to its own range. "
            "Each hand-made kernel is matched with the learned filter whose brightness response (0.299 R + "
            "0.587 G + 0.114 B) is most like it: cosine similarity over the filter's 3x3 windows; a negative "
            "value is the same detector with the sign flipped (dark-to-light instead of light-to-dark).")
    return section("First-layer filters",
                   image(figures.image_uri(figures.filter_grid(weights)), f"{name}: learned filters"),
                   pages.paragraph(note), table(["kernel", "most similar filter", "similarity"], rows, numeric=(1, 2)),
                   image(figures.embed(figures.kernel_matches(look.KERNELS, weights, found)), "kernel matches"))


def _feature_maps_section(loaded, absent: str) -> str:
    title = "Feature maps"
    if absent:
        return section(title, missing(f"No feature maps: {absent}."))
    picked = look.sample_images(loaded)
    blocks = [(label, out) for label, out in look.feature_maps(loaded, loaded.x_test[picked])
              if out.shape[-1] * out.shape[-2] > 1]  # a 1x1 map (after global pooling) shows nothing
    parts = [pages.paragraph("After each block (the last layer working at each resolution): the test image, the "
                             "mean of all channels, then the eight most active channels, each map in its own "
                             "range (yellow high, purple low).")]
    for row, index in enumerate(picked):
        image_ = loaded.x_test[index].permute(1, 2, 0).numpy()
        strips = [[label, image(figures.image_uri(figures.feature_maps(image_, out[row])), label)]
                  for label, out in blocks]
        parts.append(f"<h3>{esc(loaded.classes[int(loaded.y_test[index])])} (test image {index})</h3>")
        parts.append(pages.table(["block", "image · mean · most active channels"], strips, raw=(1,)))
    return section(title, *parts)


def _cost_section(record: Record, loaded, absent: str) -> str:
    from .describe import human, layers

    title = "Architecture and cost"
    model = loaded.model if loaded is not None else None
    if model is None:
        try:
            model = look.model_from_config(record)
        except CnnlabError as exc:
            return section(title, missing(f"No cost table: {absent}, and {exc}."))
    from .engine import plain

    cfg_size = int(record.params.get("image_size") or 32)
    rows = layers(plain(model), 3, cfg_size)
    body = [[r.name, r.label, "x".join(map(str, r.shape)), human(r.params) if r.params else "",
             human(r.flops) if r.flops else ""] for r in rows]
    params, flops = sum(r.params for r in rows), sum(r.flops for r in rows)
    body.append(["total", "", "", human(params), human(flops)])
    return section(title, pages.paragraph(f"{record.params.get('arch.name')} at {cfg_size}x{cfg_size}: "
                                          f"{params:,} parameters, {flops:,} FLOPs per image (forward)."),
                   table(["layer", "type", "output", "params", "FLOPs"], body, numeric=(3, 4)))


def _config_section(record: Record, label: str, base: Optional[Dict[str, Any]], describe_changes) -> str:
    from .log import differs

    keys = sorted(k for k in record.params if not k.startswith("split."))
    changed = set(differs(base, record.params)) if base is not None else set()
    rows = [[k, record.params[k], "" if base is None else base.get(k)] for k in keys]
    text = (f"Against {label}: " + (describe_changes(base, record.params) or "no architecture change") +
            ("; " + ", ".join(sorted(changed)) + " differ" if changed else "; nothing else differs")) \
        if base is not None else f"This run is {label}."
    return section("Config", pages.paragraph(text),
                   table(["key", "this run", label if base is not None else ""], rows,
                         classes=["changed" if k in changed else "" for k in keys]))


# ---------------------------------------------------------------- a sweep or an experiment


def group_page(store: Store, target: Target, ui_url: str) -> str:
    from . import log as run_log
    from . import summary

    records = target.records or []
    if not records:
        raise CnnlabError(f"{target.kind.capitalize()} {target.name!r} has no runs yet: nothing to report.")
    if target.kind == "sweep":
        metric = str(target.record.params.get("metric") or Metric.VAL_ACC)
        direction = str(target.record.params.get("direction") or "maximize")
    else:
        metric, direction = Metric.VAL_ACC, "maximize"
    latest = summary.latest_attempts(records)
    states: Dict[str, int] = {}
    for r in latest:
        states[r.state] = states.get(r.state, 0) + 1
    log = run_log.build(store, records, ui_url=ui_url, curves=False)
    groups = [g for g in log.groups if (g.sweep or None) == (target.name if target.kind == "sweep" else None)] \
        if target.kind == "sweep" else log.groups
    values = {r.run_id: summary.objective(r, metric) for r in latest}
    scored = [r for r in latest if r.state == "FINISHED" and values[r.run_id] is not None]
    best = (max if direction == "maximize" else min)(scored, key=lambda r: values[r.run_id]) if scored else None
    again = f"; {len(records) - len(latest)} earlier attempt(s) also listed below" if len(records) > len(latest) \
        else ""
    facts = [["runs", f"{len(latest)} ({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}){again}"],
             ["objective", f"{metric} ({direction}), at each run's best epoch"],
             ["best", f"{best.id}: {values[best.run_id]:.4f}" if best else "none finished yet"]]
    if target.kind == "sweep":
        p = target.record.params
        facts[:0] = [["experiment", target.record.experiment], ["strategy", p.get("strategy", "?")],
                     ["space", p.get("space", "")]]
    sections = [section("Summary", table(None, facts))]
    histories = store.histories([r.run_id for r in latest], [metric])
    points = [(i, values[r.run_id] if r.state == "FINISHED" else _last(histories[r.run_id].get(metric)), r.state)
              for i, r in enumerate(latest)]
    sections.append(section(
        "Optimisation history",
        image(figures.embed(figures.history_plot(points, metric, direction)), "optimisation history"),
        image(figures.embed(figures.trial_curves([(r.id, histories[r.run_id].get(metric, {}), r.state)
                                                  for r in latest], metric, best.id if best else None)),
              "trial curves")))
    sections.append(_space_section(latest, values, metric, direction, target.kind))
    bars = [(g.params or ("base" if g.sweep else ", ".join(g.ids[:3])), g.mean, g.std, g.n) for g in groups]
    sections.append(section(
        "Mean ± std per configuration",
        image(figures.embed(figures.config_bars(bars, metric)), "per configuration") if bars
        else missing("No configuration has a finished run yet."),
        "" if any(g.n > 1 for g in groups) else pages.paragraph("Each configuration ran with one seed: no error "
                                                                 "bars (repeat with --repeats N for them)."),
        _standings(groups, metric)))
    sections.append(_pareto_section(scored))
    sections.append(section("Training log", _log_table(log)))
    title = f"{'Sweep' if target.kind == 'sweep' else 'Experiment'} {target.name}"
    return pages.page(title, f"{len(latest)} runs · objective {metric} ({direction})", sections)


def _standings(groups, metric: str) -> str:
    """Which configurations are tied with the best (summary's standings), where seeds allow a verdict."""
    from .summary import mean_std, standing

    if not any(g.standing for g in groups):
        return ""
    rows = [[g.params or "(base)", g.n, mean_std(g.mean, g.std), mean_std(g.test_mean, g.test_std), standing(g)]
            for g in groups]
    tied = [g.params or "(base)" for g in groups if g.standing == "tied"]
    level = next(g.against_best.confidence for g in groups if g.against_best is not None)
    return (table(["configuration", "seeds", metric, "test_acc", "vs best"], rows, numeric=[1]) +
            pages.paragraph(f"Tied with the best (not separated by {metric} over their seeds at {level:.0%}): "
                            f"{', '.join(tied) if tied else 'none'}."))


def _last(series: Optional[Dict[int, float]]) -> Optional[float]:
    return series[max(series)] if series else None


def _space_params(records: List[Record], kind: str) -> Dict[str, Dict[str, Any]]:
    """run id -> the values that vary between the runs: a sweep's swept values (seed aside), an experiment's
    config keys that differ between its runs."""
    from .log import differs

    if kind == "sweep":
        return {r.run_id: {k: parse_value(v) for k, v in r.swept.items() if k != "seed"} for r in records}
    keys = sorted({k for r in records[1:] for k in differs(records[0].params, r.params)}) if records else []
    return {r.run_id: {k: r.params.get(k) for k in keys if k != "seed"} for r in records}


def study_of(records: List[Record], values: Dict[str, Optional[float]], params: Dict[str, Dict[str, Any]],
             direction: str):
    """An in-memory Optuna study holding the runs as trials (finished: COMPLETE, pruned: PRUNED, others FAIL),
    so that Optuna's own importance evaluators and plots apply to any sweep strategy and to an experiment."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seen: Dict[str, List[Any]] = {}
    for run_params in params.values():
        for k, v in run_params.items():
            seen.setdefault(k, []).append(v)
    distributions = {}
    for k, vs in seen.items():
        present = [v for v in vs if v is not None]
        if len({json.dumps(v, sort_keys=True, default=str) for v in present}) < 2:
            continue  # not varied: nothing to plot or explain
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            low, high = min(present), max(present)
            if all(isinstance(v, int) for v in present):
                distributions[k] = IntDistribution(int(low), int(high))
            else:
                distributions[k] = FloatDistribution(float(low), float(high), log=low > 0 and high / low >= 100)
        else:
            distributions[k] = CategoricalDistribution(sorted({_choice(v) for v in vs}, key=str))
    study = optuna.create_study(direction=direction)
    for r in records:
        run_params = {k: _fit(params[r.run_id].get(k), d) for k, d in distributions.items()}
        run_params = {k: v for k, v in run_params.items() if v is not None}
        value = values.get(r.run_id)
        state = (optuna.trial.TrialState.COMPLETE if r.state == "FINISHED" and value is not None
                 else optuna.trial.TrialState.PRUNED if r.state == "PRUNED" else optuna.trial.TrialState.FAIL)
        study.add_trial(optuna.trial.create_trial(
            params=run_params, distributions={k: distributions[k] for k in run_params},
            value=value if state == optuna.trial.TrialState.COMPLETE else None, state=state,
            user_attrs={"id": r.id}))
    return study, list(distributions)


def _choice(value: Any) -> Any:
    """A categorical value as Optuna takes it (None, bool, int, float or str)."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value, default=str)


def _fit(value: Any, distribution) -> Any:
    from optuna.distributions import CategoricalDistribution

    if value is None:
        return None
    if isinstance(distribution, CategoricalDistribution):
        return _choice(value)
    return type(distribution.low)(value)


PARALLEL_AXES = 6  # parameters a parallel-coordinates plot shows at most (the most important first)


def _space_section(records: List[Record], values, metric: str, direction: str, kind: str) -> str:
    title = "Parameters against the objective"
    params = _space_params(records, kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        study, varied = study_of(records, values, params, direction)
        import optuna
        from optuna.visualization import matplotlib as optuna_plots

        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(complete) < 2:
            return section(title, missing(f"Parallel coordinates and importances need two finished runs; "
                                          f"{len(complete)} finished."))
        if not varied:
            return section(title, missing("No parameter varies between the runs: nothing to compare."))
        try:
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except (RuntimeError, ValueError) as exc:
            importances = {}
            same = "variance" in str(exc).lower()
            note = missing("No parameter importances: every finished run has the same " + metric + ", so no "
                           "parameter explains a difference." if same else f"No parameter importances ({exc}).")
        else:
            note = pages.paragraph("Parameter importances (Optuna's fANOVA evaluator, normalised to sum to 1), from "
                                   f"{len(complete)} finished runs.") + \
                table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in importances.items()], numeric=(1,))
        shown = (list(importances) or sorted(varied))[:PARALLEL_AXES]  # more axes than this cannot be read
        ax = optuna_plots.plot_parallel_coordinate(study, params=shown, target_name=metric)
        fig = ax.figure
        fig.set_size_inches(max(7, 1.6 * len(shown) + 3), 4.2)
        parts = [image(figures.embed(fig), "parallel coordinates")]
        if len(varied) > len(shown):
            parts.append(pages.paragraph(f"The {len(shown)} most important of {len(varied)} parameters that vary."))
    return section(title, *parts, note)


def _pareto_section(scored: List[Record]) -> str:
    title = "Accuracy against cost"
    key = "test_acc"
    points = [(r.id, r.metrics.get("params"), r.metrics.get("flops"), r.metrics.get(key)) for r in scored]
    points = [p for p in points if None not in p]
    if not points:
        return section(title, missing("No finished run recorded its parameter count, FLOPs and test accuracy."))
    front = figures.pareto_front([(p[1], p[3]) for p in points])
    rows = [[points[i][0], f"{points[i][1]:,.0f}", f"{points[i][2]:,.0f}", f"{points[i][3]:.4f}"] for i in front]
    return section(title, image(figures.embed(figures.pareto(points, key)), "accuracy against cost"),
                   pages.paragraph("On the Pareto front by parameter count (no other run is smaller and more "
                                   "accurate):"),
                   table(["run", "params", "FLOPs", key], rows, numeric=(1, 2, 3)))


def _log_table(log) -> str:
    shown = log.short_columns()
    rows = [[c.text(values[c.header]) for c in shown]
            for values in (dict(zip(log.table.columns, row)) for row in log.table.itertuples(index=False))]
    return table([c.short for c in shown], rows,
                 classes=["best" if i == log.best else "" for i in range(len(rows))])


# ---------------------------------------------------------------- the command


def report(ref: str, out: Optional[Path] = None, experiments: Optional[List[str]] = None,
           ui_url: Optional[str] = None) -> Tuple[Target, Path]:
    """Write the report of what `ref` names; a run's (or a sweep's) is also logged to its MLflow run."""
    from .ui import last_url

    store = Store(create=False)
    target = resolve(store, ref, experiments)
    url = ui_url or last_url()
    text = run_page(store, target.record, url) if target.kind == "run" else group_page(store, target, url)
    path = pages.write(text, out or default_path(target))
    if target.record is not None and store.writable:
        try:
            store.open(target.record).log_artifacts([path], "reports")
        except OSError as exc:  # a read-only or full store: the page itself was written, and is what was asked
            print(f"note: the report was not attached to the run's artifacts ({exc.strerror})", file=sys.stderr)
    return target, path
