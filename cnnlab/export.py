"""The training log: every recorded run as a row of the course's table, from MLflow.

`collect()` picks the runs (experiments, sweep, status, dates, arch), `build()` turns them into
the log (the "Training log" table plus per-epoch curves, per-class accuracy and per-sweep
summaries), `write()` saves it as .xlsx, .csv or .md, atomically and never over an existing
file without `force`. ARCHITECTURE CHANGES is the difference between a run's resolved config
and its baseline, written the way the course writes it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .errors import CnnlabError

FORMATS = (".xlsx", ".csv", ".md")
EXPERIMENT_COLS = ["ID", "BATCH SIZE", "FILE", "DATA SETS", "TEST SPLIT", "EPOCH", "LR", "IMAGE SIZE",
                   "ARCHITECTURE CHANGES"]
SOURCE_COLS = ["ACC TRAIN", "ACC VAL", "ACC TEST", "ACC AVG"]
TARGET_AVG = "TARGET ACC AVG"
EXTRA_COLS = ["ARCH", "PARAMS", "MFLOPS", "WALL TIME (S)", "STATUS", "RUN ID", "MLFLOW"]
CURVE_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_test_loss", "epoch_test_acc")
# config keys whose changes ARCHITECTURE CHANGES describes (the others have columns of their own)
CHANGE_KEYS = ("arch.name", "dense_units", "dropout", "batch_norm", "pool", "activation", "width", "depth",
               "optimizer", "momentum", "nesterov", "weight_decay", "scheduler", "label_smoothing", "augment",
               "early_stopping")
STATES = ("FINISHED", "FAILED", "KILLED", "PRUNED", "RUNNING")
SORT_KEYS = {"start": None, "val_acc": "ACC VAL", "test_acc": "ACC TEST", "train_acc": "ACC TRAIN",
             "lr": "LR", "batch_size": "BATCH SIZE", "epochs": "EPOCH", "wall_time": "WALL TIME (S)",
             "params": "PARAMS", "flops": "MFLOPS", "id": "ID"}


@dataclass
class Log:
    table: "Any"  # pandas DataFrame: the Training log, one row per run, in start order
    target_cols: List[str]
    curves: "Any"  # ID, epoch, the CURVE_KEYS
    per_class: "Any"  # ID + one column per class
    sweeps: "Any"  # per sweep and configuration: mean +- std over seeds
    best: Optional[int] = None  # row index of the best run (by validation accuracy)
    experiments: Dict[str, str] = field(default_factory=dict)  # id -> name


# ---------------------------------------------------------------- reading MLflow


def parse_value(text: Optional[str]) -> Any:
    """An MLflow param (always a string) back to the value it was: '64' -> 64, 'True' -> True, 'None' -> None."""
    if text is None or text == "None":
        return None
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def collect(client, experiments: Sequence[str] = ("cifar10",), sweep: Optional[str] = None,
            status: Sequence[str] = (), since: Optional[str] = None, until: Optional[str] = None,
            arch: Sequence[str] = ()) -> tuple:
    """(runs oldest first, {experiment id: name}); sweep parent runs are not rows of the log."""
    known = {e.name: e.experiment_id for e in client.search_experiments()}
    missing = [e for e in experiments if e not in known]
    if missing:
        raise CnnlabError(f"Unknown experiment(s) {', '.join(missing)} in {client.tracking_uri}. "
                          f"Known: {', '.join(sorted(known)) or 'none (nothing recorded yet)'}.")
    bad = [s for s in status if s.upper() not in STATES]
    if bad:
        raise CnnlabError(f"Unknown status {', '.join(bad)}. Valid: {', '.join(STATES)}.")
    ids = [known[e] for e in experiments]
    clauses = []
    if sweep:
        clauses.append(f"tags.`cnnlab.sweep` = '{sweep}'")
    for name, value, op in (("since", since, ">="), ("until", until, "<")):
        if value:
            try:
                day = dt.datetime.fromisoformat(value)
            except ValueError:
                raise CnnlabError(f"--{name} {value}: expected a date like 2026-11-24 (or 2026-11-24T15:00).") from None
            if name == "until" and len(value) <= 10:
                day += dt.timedelta(days=1)  # --until 2026-11-24 includes that day
            clauses.append(f"attributes.start_time {op} {int(day.timestamp() * 1000)}")
    runs = []
    token = None
    while True:
        page = client.search_runs(ids, " and ".join(clauses), max_results=5000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        runs += list(page)
        token = page.token
        if not token:
            break
    runs = [r for r in runs if "cnnlab.sweep_parent" not in r.data.tags]
    if status:
        wanted = {s.upper() for s in status}
        runs = [r for r in runs if _state(r) in wanted]
    if arch:
        runs = [r for r in runs if r.data.params.get("arch.name") in set(arch)]
    return runs, {v: k for k, v in known.items()}


def _state(run) -> str:
    return run.data.tags.get("cnnlab.state", run.info.status)


def histories(client, run_ids: List[str], keys: Sequence[str]) -> Dict[str, Dict[str, Dict[int, float]]]:
    """run id -> metric -> {step: first value logged at that step}, fetched in bulk where the store can."""
    out: Dict[str, Dict[str, Dict[int, float]]] = {r: {} for r in run_ids}
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    for key in keys:
        if hasattr(store, "get_metric_history_bulk"):
            for i in range(0, len(run_ids), 500):
                for m in store.get_metric_history_bulk(run_ids[i:i + 500], key, max_results=10 ** 7):
                    out[m.run_id].setdefault(key, {}).setdefault(m.step, m.value)
        else:  # a tracking server: one request per run
            for run_id in run_ids:
                for m in client.get_metric_history(run_id, key):
                    out[run_id].setdefault(key, {}).setdefault(m.step, m.value)
    return out


# ---------------------------------------------------------------- ARCHITECTURE CHANGES


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe_changes(base: Dict[str, Any], cfg: Dict[str, Any]) -> str:
    """What changed from `base` to `cfg`, in the course's words: 'Increase dense units 64→500; added dropout 0.5'."""
    parts = []
    keys = list(CHANGE_KEYS) + sorted(k for k in set(base) | set(cfg)
                                      if k.startswith("arch.") and k != "arch.name")
    for key in keys:
        a, b = base.get(key), cfg.get(key)
        if a == b or (a is None and b is None):
            continue
        if key == "arch.name":
            parts.append(f"architecture {a}→{b}")
        elif key == "dense_units":
            if not b:
                parts.append("removed dense layer")
            elif not a:
                parts.append(f"added dense layer of {b} units")
            else:
                parts.append(f"{'increase' if b > a else 'decrease'} dense units {a}→{b}")
        elif key == "dropout":
            if not b:
                parts.append("removed dropout")
            elif not a:
                parts.append(f"added dropout {_num(b)}")
            else:
                parts.append(f"dropout {_num(a)}→{_num(b)}")
        elif key == "batch_norm":
            parts.append("batch norm on" if b else "batch norm off")
        elif key == "augment":
            parts.append("augmentation on" if b else "augmentation off")
        elif key == "nesterov":
            parts.append("Nesterov momentum on" if b else "Nesterov momentum off")
        elif key == "pool":
            parts.append(f"{b} pooling instead of {a}")
        elif key == "width":
            parts.append(f"width x{_num(a)}→x{_num(b)}")
        else:
            parts.append(f"{key.replace('_', ' ')} {_num(a)}→{_num(b)}")
    if not parts:
        return ""
    text = "; ".join(parts)
    return text[0].upper() + text[1:]


def _config(run) -> Dict[str, Any]:
    return {k: parse_value(v) for k, v in run.data.params.items()}


# ---------------------------------------------------------------- the log


def _count(n: Optional[int]) -> str:
    if n is None:
        return "?"
    return f"{n / 1000:g}k" if n >= 1000 else str(n)


def build(client, runs, experiments: Dict[str, str], baseline: Optional[str] = None,
          ui_url: str = "http://127.0.0.1:5000") -> Log:
    import pandas as pd

    if not runs:
        raise CnnlabError(f"No runs match in {client.tracking_uri}: train some (`cnnlab train`) or widen the filters.")
    configs = [_config(r) for r in runs]
    base_cfg = None
    if baseline:
        match = [r for r in runs if baseline in (r.info.run_id, r.info.run_name)]
        if not match:
            try:
                match = [client.get_run(baseline)]
            except Exception:
                raise CnnlabError(f"--baseline {baseline}: no run with that id or name.") from None
        base_cfg = _config(match[0])
    parents: Dict[str, Dict[str, Any]] = {}
    sweeps = {r.data.tags.get("cnnlab.sweep") for r in runs}
    standalone = any("cnnlab.sweep" not in r.data.tags for r in runs)
    prefix_ids = len(sweeps - {None}) > 1 or (standalone and len(sweeps - {None}) > 0)

    # IDs: a sweep's trials keep theirs; other runs are T0, T1, ... in start order
    ids, attempts, n_standalone = [], {}, 0
    for r in runs:
        trial, sweep = r.data.tags.get("cnnlab.trial"), r.data.tags.get("cnnlab.sweep")
        if trial is None:
            ids.append(f"T{n_standalone}")
            n_standalone += 1
        else:
            ids.append(f"{sweep}/{trial}" if prefix_ids else trial)
    latest = {}
    for i, r in enumerate(runs):  # retried trials: the earlier attempts are marked "#1", "#2", ...
        latest.setdefault(ids[i], []).append(i)
    for tid, rows in latest.items():
        for n, i in enumerate(rows[:-1], 1):
            ids[i] = f"{tid} #{n}"

    rows = []
    previous: Dict[str, Dict[str, Any]] = {}  # experiment -> config of the previous standalone run
    for i, (r, cfg) in enumerate(zip(runs, configs)):
        m, tags = r.data.metrics, r.data.tags
        parent_id = tags.get("mlflow.parentRunId")
        if base_cfg is not None:
            ref = base_cfg
        elif parent_id:
            if parent_id not in parents:
                params = client.get_run(parent_id).data.params
                parents[parent_id] = {k[5:]: parse_value(v) for k, v in params.items() if k.startswith("base.")}
            ref = parents[parent_id] or None
        else:
            ref = previous.get(r.info.experiment_id)
            previous[r.info.experiment_id] = cfg
        is_base = ref is None or (baseline and baseline in (r.info.run_id, r.info.run_name))
        changes = "baseline" if is_base else (describe_changes(ref, cfg) or "no architecture change")
        if parent_id and not is_base and changes == "no architecture change" and _same(ref, cfg):
            changes = "baseline"
        frac = cfg.get("data.train_fraction") or 1.0
        data_sets = f"{cfg.get('data.name', '?')}{f' {frac:.0%}' if frac < 1 else ''} ({_count(cfg.get('split.train'))} train)"
        val_split = cfg.get("val_split") or 0
        test_split = f"val {val_split:.0%} / test {_count(cfg.get('split.test'))}"
        train_acc = m.get("train_acc_final", m.get("train_acc"))
        val_acc = m.get("val_acc_best", m.get("val_acc"))
        test_acc = m.get("test_acc")
        source = [v for v in (train_acc, val_acc, test_acc) if v is not None and not math.isnan(v)]
        run_dir = tags.get("cnnlab.run_dir", "")
        row = {
            "ID": ids[i], "BATCH SIZE": cfg.get("batch_size"),
            "FILE": _relative_run_dir(run_dir) or r.info.run_name,
            "DATA SETS": data_sets, "TEST SPLIT": test_split, "EPOCH": cfg.get("epochs"), "LR": cfg.get("lr"),
            "IMAGE SIZE": f"{cfg.get('image_size', 32)}x{cfg.get('image_size', 32)}",
            "ARCHITECTURE CHANGES": changes,
            "ACC TRAIN": train_acc, "ACC VAL": val_acc, "ACC TEST": test_acc,
            "ACC AVG": statistics.fmean(source) if source else None,
        }
        targets = {k[len("target_acc_"):]: v for k, v in m.items() if k.startswith("target_acc_")}
        for name, v in targets.items():
            row[_target_col(name)] = v
        row[TARGET_AVG] = statistics.fmean(targets.values()) if targets else None
        row.update({
            "ARCH": cfg.get("arch.name"), "PARAMS": _int(m.get("params")),
            "MFLOPS": None if m.get("flops") is None else round(m["flops"] / 1e6, 2),
            "WALL TIME (S)": None if m.get("wall_time") is None else round(m["wall_time"], 1),
            "STATUS": _state(r), "RUN ID": r.info.run_id,
            "MLFLOW": f"{ui_url.rstrip('/')}/#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}",
        })
        rows.append(row)
    target_cols = sorted({c for row in rows for c in row if c.startswith("ACC ") and c not in SOURCE_COLS})
    columns = EXPERIMENT_COLS + SOURCE_COLS + target_cols + [TARGET_AVG] + EXTRA_COLS
    table = pd.DataFrame(rows, columns=columns)
    scored = table["ACC VAL"].dropna()
    best = int(scored.idxmax()) if len(scored) else None

    hist = histories(client, [r.info.run_id for r in runs], CURVE_KEYS)
    curve_rows = []
    for tid, r in zip(ids, runs):
        h = hist[r.info.run_id]
        for step in sorted({s for values in h.values() for s in values}):
            curve_rows.append({"ID": tid, "epoch": step, **{k: h.get(k, {}).get(step) for k in CURVE_KEYS}})
    curves = pd.DataFrame(curve_rows, columns=["ID", "epoch", *CURVE_KEYS])

    classes: List[str] = []
    for r in runs:
        for k in r.data.metrics:
            if k.startswith("test_acc_") and k[9:] not in classes:
                classes.append(k[9:])
    per_class = pd.DataFrame([{"ID": tid, **{c: r.data.metrics.get(f"test_acc_{c}") for c in classes}}
                              for tid, r in zip(ids, runs)], columns=["ID", *classes])
    return Log(table, target_cols, curves, per_class, _sweep_summary(runs, ids), best, experiments)


def _same(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    """Same configuration apart from bookkeeping (seed, names, sizes)."""
    skip = ("seed", "run_name", "experiment", "threads", "device", "precision")
    keys = {k for k in set(a) | set(b) if not k.startswith(("split.", "tracking.")) and k not in skip}
    return all(a.get(k) == b.get(k) for k in keys)


def _int(v: Optional[float]) -> Optional[int]:
    return None if v is None else int(v)


def _target_col(name: str) -> str:
    return f"ACC {name.replace('_', ' ').upper()}"


def _relative_run_dir(path: str) -> str:
    from .config import runs_dir

    try:
        return Path(path).relative_to(runs_dir()).as_posix()
    except ValueError:
        return path


def _sweep_summary(runs, ids):
    import pandas as pd

    groups: Dict[tuple, List[tuple]] = {}
    for tid, r in zip(ids, runs):
        tags = r.data.tags
        if "cnnlab.sweep" in tags and _state(r) == "FINISHED":
            groups.setdefault((tags["cnnlab.sweep"], tags.get("cnnlab.config_key", "")), []).append((tid, r))
    rows = []
    for (sweep, _), members in groups.items():
        swept = json.loads(members[0][1].data.tags.get("cnnlab.swept", "{}"))
        vals = [r.data.metrics.get("val_acc_best") for _, r in members if r.data.metrics.get("val_acc_best") is not None]
        tests = [r.data.metrics.get("test_acc") for _, r in members if r.data.metrics.get("test_acc") is not None]
        rows.append({
            "SWEEP": sweep, "CONFIG": " ".join(f"{k}={v}" for k, v in swept.items() if k != "seed") or "(base)",
            "SEEDS": len(members),
            "VAL MEAN": statistics.fmean(vals) if vals else None,
            "VAL STD": statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None,
            "TEST MEAN": statistics.fmean(tests) if tests else None,
            "TEST STD": statistics.stdev(tests) if len(tests) > 1 else 0.0 if tests else None,
            "TRIALS": " ".join(tid for tid, _ in members),
        })
    return pd.DataFrame(rows, columns=["SWEEP", "CONFIG", "SEEDS", "VAL MEAN", "VAL STD", "TEST MEAN", "TEST STD",
                                       "TRIALS"])


def sort_top(log: Log, sort: Optional[str] = None, top: Optional[int] = None, reverse: bool = False) -> Log:
    """Rows ordered by `sort` (accuracies best first, the rest ascending; start order by default), first `top`."""
    table = log.table
    if sort:
        if sort not in SORT_KEYS:
            raise CnnlabError(f"--sort {sort}: valid keys are {', '.join(SORT_KEYS)}.")
        column = SORT_KEYS[sort]
        if column is not None:
            descending = column.startswith("ACC ")
            table = table.sort_values(column, ascending=not descending, na_position="last", kind="stable")
    if reverse:
        table = table.iloc[::-1]
    if top is not None:
        if top < 1:
            raise CnnlabError("--top must be >= 1.")
        table = table.head(top)
    keep = set(table["ID"])
    best_id = log.table["ID"].iloc[log.best] if log.best is not None else None
    table = table.reset_index(drop=True)
    best = int(table.index[table["ID"] == best_id][0]) if best_id in keep else None
    return Log(table, log.target_cols, log.curves[log.curves["ID"].isin(keep)].reset_index(drop=True),
               log.per_class[log.per_class["ID"].isin(keep)].reset_index(drop=True), log.sweeps, best,
               log.experiments)


def changed_columns(table) -> List[str]:
    """ID plus the columns whose values differ between rows (what --only-changed shows)."""
    keep = ["ID"]
    for name in table.columns[1:]:
        values = {str(v) for v in table[name].tolist()}
        if len(values) > 1:
            keep.append(name)
    return keep


# ---------------------------------------------------------------- writing


def check_destination(path: Path, force: bool) -> None:
    """Refuse before any work: unknown format, existing file without force, unwritable directory."""
    if path.suffix.lower() not in FORMATS:
        raise CnnlabError(f"{path}: unknown format {path.suffix or '(no extension)'}; valid: {', '.join(FORMATS)}.")
    if path.exists() and not force:
        raise CnnlabError(f"{path} exists; pass --force to replace it (the old file stays until the new one is complete).")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CnnlabError(f"Cannot write {path}: directory {parent} does not exist.")
    if not os.access(parent, os.W_OK):
        raise CnnlabError(f"Cannot write {path}: directory {parent} is not writable.")


def write(log: Log, path: Path, force: bool = False) -> Path:
    """Write `log` to `path` (format from the extension) atomically: a crash leaves any old file intact."""
    path = Path(path)
    check_destination(path, force)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        {".xlsx": _write_xlsx, ".csv": _write_csv, ".md": _write_md}[path.suffix.lower()](log, Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _write_csv(log: Log, path: Path) -> None:
    log.table.to_csv(path, index=False)


def markdown(table) -> str:
    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _write_md(log: Log, path: Path) -> None:
    path.write_text("# Training log\n\n" + markdown(log.table))


ACC_FORMAT, WRAP_WIDTH = "0.000", 48


def _write_xlsx(log: Log, path: Path) -> None:
    from openpyxl import Workbook
    from openpyxl.comments import Comment
    from openpyxl.formatting.rule import ColorScaleRule
    from openpyxl.styles import Alignment, Border, PatternFill, Side
    from openpyxl.utils import get_column_letter

    wb = Workbook()
    ws = wb.active
    ws.title = "Training log"
    table = log.table
    columns = list(table.columns)
    header_fill = PatternFill("solid", fgColor="1F4E78")
    group_fill = PatternFill("solid", fgColor="2E75B6")
    white = _font(bold=True, color="FFFFFF")
    center = Alignment(horizontal="center", vertical="center", wrap_text=True)
    thin = Side(style="thin", color="BFBFBF")

    # row 1: the course's group headers, merged over their columns
    groups = [("Experiment", EXPERIMENT_COLS), ("Source Dataset", SOURCE_COLS),
              ("Target Dataset", log.target_cols + [TARGET_AVG]), ("Details", EXTRA_COLS)]
    col = 1
    for title, cols in groups:
        ws.cell(row=1, column=col, value=title)
        if len(cols) > 1:
            ws.merge_cells(start_row=1, start_column=col, end_row=1, end_column=col + len(cols) - 1)
        for c in range(col, col + len(cols)):
            ws.cell(row=1, column=c).fill = group_fill
            ws.cell(row=1, column=c).font = white
            ws.cell(row=1, column=c).alignment = center
        col += len(cols)
    for c, name in enumerate(columns, 1):
        cell = ws.cell(row=2, column=c, value=name)
        cell.fill, cell.font, cell.alignment = header_fill, white, center
        cell.border = Border(bottom=thin)
    ws.row_dimensions[1].height = 30  # "Target Dataset" wraps over a single column
    ws.row_dimensions[2].height = 32

    formats = {"LR": "0.0####", "PARAMS": "#,##0", "MFLOPS": "#,##0.00", "WALL TIME (S)": "#,##0.0",
               "BATCH SIZE": "0", "EPOCH": "0"}
    acc_cols = [c for c in columns if c.startswith("ACC ") or c == TARGET_AVG]
    for r, row in enumerate(table.itertuples(index=False), 3):
        for c, (name, value) in enumerate(zip(columns, row), 1):
            cell = ws.cell(row=r, column=c, value=_cell_value(value))
            if name in acc_cols:
                cell.number_format = ACC_FORMAT
            elif name in formats:
                cell.number_format = formats[name]
            if name == "MLFLOW" and value:
                cell.hyperlink = value
                cell.style = "Hyperlink"
            if name == "ARCHITECTURE CHANGES":
                cell.alignment = Alignment(wrap_text=True, vertical="top")
    last = len(table) + 2
    if log.best is not None:  # the best run by validation accuracy: the test set never chooses
        best_fill = PatternFill("solid", fgColor="FFF2CC")
        for c, name in enumerate(columns, 1):
            cell = ws.cell(row=log.best + 3, column=c)
            cell.fill = best_fill
            if name != "MLFLOW":
                cell.font = _font(bold=True)
        ws.cell(row=2, column=columns.index("ACC VAL") + 1).comment = Comment(
            "The highlighted row is the best run by validation accuracy (the test set never chooses).", "cnnlab")
    for name in acc_cols:
        letter = get_column_letter(columns.index(name) + 1)
        ws.conditional_formatting.add(f"{letter}3:{letter}{last}", ColorScaleRule(
            start_type="min", start_color="F8696B", mid_type="percentile", mid_value=50, mid_color="FFEB84",
            end_type="max", end_color="63BE7B"))
    ws.freeze_panes = "B3"
    ws.auto_filter.ref = f"A2:{get_column_letter(len(columns))}{last}"
    _landscape(ws)
    _fit_columns(ws, table, {"ARCHITECTURE CHANGES": WRAP_WIDTH, "MLFLOW": 30, "FILE": 40})

    _write_curves(wb, log)
    _write_frame(wb, "Per class", log.per_class, ACC_FORMAT)
    _write_frame(wb, "Sweeps", log.sweeps, "0.0000")
    wb.save(path)


def _font(**kwargs):
    """A font in the workbook's default face (a bare Font() renders in a serif face in LibreOffice)."""
    from openpyxl.styles import Font

    return Font(name="Calibri", size=11, **kwargs)


def _landscape(ws) -> None:
    """Print (and convert to PDF) landscape, the whole width on one page."""
    ws.page_setup.orientation = "landscape"
    ws.page_setup.fitToWidth = 1
    ws.page_setup.fitToHeight = 0
    ws.sheet_properties.pageSetUpPr.fitToPage = True
    ws.print_title_rows = "1:2" if ws.title == "Training log" else "1:1"


def _cell_value(value):
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _fit_columns(ws, table, caps: Dict[str, int]) -> None:
    from openpyxl.utils import get_column_letter

    for c, name in enumerate(table.columns, 1):
        texts = [v for v in table[name].tolist() if isinstance(v, str)]
        longest = max([len(name) // 2 + 1, 8] + [len(v) for v in texts])  # headers wrap onto two lines
        ws.column_dimensions[get_column_letter(c)].width = min(caps.get(name, 60), longest + 2)


def _write_frame(wb, title: str, frame, number_format: str) -> Any:
    from openpyxl.styles import Alignment, PatternFill

    ws = wb.create_sheet(title)
    for c, name in enumerate(frame.columns, 1):
        cell = ws.cell(row=1, column=c, value=name)
        cell.font = _font(bold=True, color="FFFFFF")
        cell.fill = PatternFill("solid", fgColor="1F4E78")
        cell.alignment = Alignment(horizontal="center", wrap_text=True)
    for r, row in enumerate(frame.itertuples(index=False), 2):
        for c, value in enumerate(row, 1):
            cell = ws.cell(row=r, column=c, value=_cell_value(value))
            if isinstance(cell.value, float):
                cell.number_format = number_format
    ws.freeze_panes = "B2"
    _fit_columns(ws, frame, {"CONFIG": 50})
    _landscape(ws)
    return ws


MAX_SERIES = 25  # more lines than this make a chart unreadable


def _write_curves(wb, log: Log) -> None:
    from openpyxl.chart import Reference, ScatterChart, Series

    ws = _write_frame(wb, "Curves", log.curves, "0.0000")
    if log.curves.empty:
        return
    ids = list(dict.fromkeys(log.curves["ID"]))
    col = {name: i + 1 for i, name in enumerate(log.curves.columns)}
    for n, (metric, title) in enumerate((("val_acc", "validation accuracy"), ("epoch_test_acc", "test accuracy"),
                                         ("val_loss", "validation loss"))):
        chart = ScatterChart()
        shown = ids[:MAX_SERIES]
        chart.title = title + (f" (first {MAX_SERIES} of {len(ids)} runs)" if len(ids) > MAX_SERIES else "")
        chart.style, chart.height, chart.width = 13, 8, 16
        chart.x_axis.title, chart.y_axis.title = "epoch", metric
        for tid in shown:
            rows = [i + 2 for i, v in enumerate(log.curves["ID"]) if v == tid]
            xs = Reference(ws, min_col=col["epoch"], min_row=rows[0], max_row=rows[-1])
            ys = Reference(ws, min_col=col[metric], min_row=rows[0], max_row=rows[-1])
            series = Series(ys, xs, title=str(tid))
            series.marker.symbol = "circle"
            series.smooth = False
            chart.series.append(series)
        ws.add_chart(chart, f"K{2 + n * 17}")
