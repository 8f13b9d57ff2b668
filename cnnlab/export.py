"""Writing the training log (log.py) as a file: .xlsx (the full workbook), .csv or .md (the log table).

Every format takes its columns, their groups and formats from columns.py. A file is written aside
and moved into place, and never over an existing one without `force`.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from . import render
from .columns import FORMATS, GROUPS
from .errors import CnnlabError
from .files import umask_mode
from .log import Log

FORMATS_BY_SUFFIX = (".xlsx", ".csv", ".md")


def check_destination(path: Path, force: bool) -> None:
    """Refuse before any work: unknown format, existing file without force, unwritable directory."""
    if path.suffix.lower() not in FORMATS_BY_SUFFIX:
        raise CnnlabError(f"{path}: unknown format {path.suffix or '(no extension)'}; "
                          f"valid: {', '.join(FORMATS_BY_SUFFIX)}.")
    if path.is_dir():
        raise CnnlabError(f"{path} is a directory; give a file name (e.g. {path / 'runs.xlsx'}).")
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
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.",
                                   suffix=".tmp")
    except OSError as exc:
        raise CnnlabError(f"Cannot write {path}: {exc.strerror or exc}.") from None
    os.close(fd)
    try:
        {".xlsx": _write_xlsx, ".csv": _write_csv, ".md": _write_md}[path.suffix.lower()](log, Path(tmp))
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except OSError as exc:
        raise CnnlabError(f"Cannot write {path}: {exc.strerror or exc}. Nothing was replaced.") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _write_csv(log: Log, path: Path) -> None:
    """The log table as CSV: numbers plainly (no thousands separators), counts as integers (N is 3, not 3.0)."""
    import pandas as pd

    table = log.table.copy()
    for column in log.columns:
        if column.fmt in ("int", "count") and column.header in table:
            table[column.header] = pd.to_numeric(table[column.header], errors="coerce").round().astype("Int64")
    table.map(render.neutralised).to_csv(path, index=False)


def _write_md(log: Log, path: Path) -> None:
    rows = [list(values) for values in log.table.itertuples(index=False)]
    legend = "".join(f"- {code}: {what}\n" for code, what in log.legend.itertuples(index=False))
    path.write_text("# Training log\n\n" + render.lines("md", log.columns, rows, headers=True) + "\n\n" + legend)


def _write_xlsx(log: Log, path: Path) -> None:
    from openpyxl import Workbook
    from openpyxl.comments import Comment
    from openpyxl.formatting.rule import ColorScaleRule
    from openpyxl.styles import Alignment, PatternFill
    from openpyxl.utils import get_column_letter

    wb = Workbook()
    ws = wb.active
    ws.title = "Training log"
    table, columns = log.table, log.columns
    widths = _fit_columns(ws, table, {c.header: c.width for c in columns if c.width})

    pages = _write_headers(ws, columns, widths)
    top = Alignment(wrap_text=True, vertical="top")
    for r, values in enumerate(table.itertuples(index=False), 3):
        for c, (column, value) in enumerate(zip(columns, values), 1):
            cell = ws.cell(row=r, column=c)
            if column.header == "MLFLOW" and value:  # a short link text: a URL would run off the page
                cell.value, cell.hyperlink, cell.style = "open run", value, "Hyperlink"
            else:
                _set(cell, value)
            if FORMATS[column.fmt][0]:
                cell.number_format = FORMATS[column.fmt][0]
            cell.alignment = top  # every cell of a tall row starts at its top, text wrapping in its column
        _fit_height(ws, r, widths)
    last = len(table) + 2
    if log.best is not None:  # the best run by validation accuracy: the test set never chooses
        best_fill = PatternFill("solid", fgColor="FFF2CC")
        for c, column in enumerate(columns, 1):
            cell = ws.cell(row=log.best + 3, column=c)
            cell.fill = best_fill
            if column.header != "MLFLOW":
                cell.font = _font(bold=True)
        ws.cell(row=2, column=[c.header for c in columns].index("ACC VAL") + 1).comment = Comment(
            "The highlighted row is the best run by validation accuracy (the test set never chooses).", "cnnlab")
    for c, column in enumerate(columns, 1):
        if column.fmt == "acc":
            letter = get_column_letter(c)
            ws.conditional_formatting.add(f"{letter}3:{letter}{last}", ColorScaleRule(
                start_type="min", start_color="F8696B", mid_type="percentile", mid_value=50, mid_color="FFEB84",
                end_type="max", end_color="63BE7B"))
    ws.freeze_panes = "B3"
    ws.auto_filter.ref = f"A2:{get_column_letter(len(columns))}{last}"
    _paginate(ws, widths, pages)

    _write_curves(wb, log)
    _write_frame(wb, "Per class", log.per_class, FORMATS["acc"][0])
    _write_frame(wb, "Sweeps", log.sweeps, "0.0000")
    _write_frame(wb, "Legend", log.legend, "@")
    wb.save(path)


def _write_headers(ws, columns, widths) -> List[List[int]]:
    """Row 1: the course's group headers, merged over their columns, one piece per printed page a group spans
    (a merged header across a page break showed on one page only); row 2: the column headers. Returns the
    printed pages' columns."""
    from openpyxl.styles import Alignment, Border, PatternFill, Side

    header_fill = PatternFill("solid", fgColor="1F4E78")
    group_fill = PatternFill("solid", fgColor="2E75B6")
    white = _font(bold=True, color="FFFFFF")
    center = Alignment(horizontal="center", vertical="center", wrap_text=True)
    col, groups = 1, []
    for title in GROUPS:
        width = sum(c.group == title for c in columns)
        if width:
            groups.append((title, col, col + width - 1))
            col += width
    pages = _page_columns(widths, [(first, end) for _, first, end in groups])
    page_of = {c: i for i, page in enumerate(pages) for c in page} | {1: 0}
    for title, first, end in groups:
        pieces: Dict[int, list] = {}
        for c in range(first, end + 1):
            pieces.setdefault(page_of[c], []).append(c)
        for piece in pieces.values():
            ws.cell(row=1, column=piece[0], value=title)
            if len(piece) > 1:
                ws.merge_cells(start_row=1, start_column=piece[0], end_row=1, end_column=piece[-1])
            for c in piece:
                ws.cell(row=1, column=c).fill, ws.cell(row=1, column=c).font = group_fill, white
                ws.cell(row=1, column=c).alignment = center
    for c, column in enumerate(columns, 1):
        cell = ws.cell(row=2, column=c, value=column.header)
        cell.fill, cell.font, cell.alignment = header_fill, white, center
        cell.border = Border(bottom=Side(style="thin", color="BFBFBF"))
    ws.row_dimensions[1].height = 30  # "Target Dataset" wraps over a single column
    _fit_height(ws, 2, widths, bold=True)
    return pages


LINE = 15  # points per line of 11-point text
PAGE_WIDTH = 103  # column-width units LibreOffice prints across a landscape A4 page at 100% (measured: 13 columns
# of width 8 fit, 14 do not; 5 of width 20, not 6; 129 units fit at 78%, not at 83%)


def _lines(text: str, width: float) -> int:
    """How many lines `text` wraps to in a column `width` characters wide."""
    import textwrap

    return max(1, len(textwrap.wrap(str(text), max(1, int(width) - 1), break_long_words=True)))


def _fit_height(ws, row: int, widths, bold: bool = False) -> None:
    """Row `row` as tall as its longest wrapped text (LibreOffice and Excel do not grow rows for wrapped text);
    bold text is wider, so it wraps sooner (TARGET ACC AVG's last word was cut)."""
    scale = 0.8 if bold else 1.0
    ws.row_dimensions[row].height = LINE * max([_lines(cell.value, widths[i] * scale) for i, cell in
                                                enumerate(ws[row]) if isinstance(cell.value, str)] + [1])


def _units(widths, cols) -> float:
    """Printed width of columns `cols` (1-based), in column-width units at 100% (LibreOffice draws a column
    in proportion to its width)."""
    return sum(widths[c - 1] for c in cols)


def _page_columns(widths, groups) -> List[List[int]]:
    """The columns (2 on: the ID column repeats on every page) of each printed page at 80%: a group goes whole
    onto a page where it fits, else onto fresh ones."""
    pages, current = [], []
    capacity = PAGE_WIDTH / 0.8 - _units(widths, [1])  # at 80%: pages hold this much beside the repeated ID column
    for first, end in groups:
        cols = list(range(first, end + 1))
        if first == 1:
            cols = cols[1:]
        for c in cols:
            if current and _units(widths, current + [c]) > capacity:
                pages.append(current)
                current = []
            current.append(c)
        if current and cols and c == cols[-1] and _units(widths, current) > capacity / 2:
            pages.append(current)
            current = []
    if current:
        pages.append(current)
    return pages


def _paginate(ws, widths, pages) -> None:
    """Print landscape, the header rows and the ID column on every page, a page break after each of `pages`,
    and one scale for all pages (readable, never the whole width squeezed onto one)."""
    from openpyxl.worksheet.pagebreak import Break, ColBreak

    ws.col_breaks = ColBreak()
    for page in pages[:-1]:
        ws.col_breaks.append(Break(id=page[-1]))
    widest = max(_units(widths, page) for page in pages) + _units(widths, [1])
    ws.page_setup.orientation = "landscape"
    ws.page_setup.paperSize = ws.PAPERSIZE_A4
    ws.page_setup.scale = max(40, min(100, int(100 * PAGE_WIDTH / widest)))
    ws.sheet_properties.pageSetUpPr.fitToPage = False
    ws.print_title_rows = "1:2"
    ws.print_title_cols = "A:A"
    ws.print_options.gridLines = True


def _set(cell, value) -> None:
    """A cell's value: numbers as numbers, text always as text (never a formula, whatever it starts with)."""
    value = _cell_value(value)
    cell.value = value
    if isinstance(value, str) and value.startswith("="):
        cell.data_type = "s"


def _font(**kwargs):
    """A font in the workbook's default face (a bare Font() renders in a serif face in LibreOffice)."""
    from openpyxl.styles import Font

    return Font(name="Calibri", size=11, **kwargs)


def _landscape(ws) -> None:
    """Print (and convert to PDF) landscape, the whole width on one page, the header on every page."""
    ws.page_setup.orientation = "landscape"
    ws.page_setup.paperSize = ws.PAPERSIZE_A4
    ws.page_setup.fitToWidth = 1
    ws.page_setup.fitToHeight = 0
    ws.sheet_properties.pageSetUpPr.fitToPage = True
    ws.print_title_rows = "1:1"


def _cell_value(value):
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _fit_columns(ws, table, caps: Dict[str, int]) -> list:
    """Column widths: as wide as the values (up to the cap, where text wraps), never narrower than the longest
    word of the header (headers wrap at spaces). Returns the widths."""
    from openpyxl.utils import get_column_letter

    widths = []
    for c, name in enumerate(table.columns, 1):
        texts = [_text(v) for v in table[name].tolist() if v is not None and not (isinstance(v, float) and v != v)]
        longest = max([len(t) for t in texts] + [0])
        word = max(len(w) for w in str(name).split())
        width = max(word + 2, 7, min(caps.get(name, 60), longest + 2))
        ws.column_dimensions[get_column_letter(c)].width = width
        widths.append(width)
    return widths


def _text(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _write_frame(wb, title: str, frame, number_format: str) -> Any:
    from openpyxl.styles import Alignment, PatternFill

    ws = wb.create_sheet(title)
    widths = _fit_columns(ws, frame, {"CONFIG": 50, "TRIALS": 40, "WHAT": 90})
    for c, name in enumerate(frame.columns, 1):
        cell = ws.cell(row=1, column=c, value=name)
        cell.font = _font(bold=True, color="FFFFFF")
        cell.fill = PatternFill("solid", fgColor="1F4E78")
        cell.alignment = Alignment(horizontal="center", vertical="center", wrap_text=True)
    _fit_height(ws, 1, widths)
    top = Alignment(wrap_text=True, vertical="top")
    for r, row in enumerate(frame.itertuples(index=False), 2):
        for c, value in enumerate(row, 1):
            cell = ws.cell(row=r, column=c)
            _set(cell, value)
            cell.alignment = top
            if isinstance(cell.value, float):
                cell.number_format = number_format
        _fit_height(ws, r, widths)
    ws.freeze_panes = "B2"
    _landscape(ws)
    return ws


MAX_SERIES = 12  # more lines than this make a chart unreadable: more runs make more charts
CHART_ROWS = 24  # rows a chart of 11 cm takes on its sheet, with a margin (a page break after each)
PALETTE = ("1F77B4", "FF7F0E", "2CA02C", "D62728", "9467BD", "8C564B", "E377C2", "7F7F7F", "BCBD22", "17BECF",
           "393B79", "AD494A")  # distinct colours (matplotlib's tab10 and two more)


def _write_curves(wb, log: Log) -> None:
    """The per-epoch curves as a table ("Curves"), and as charts on a sheet of their own ("Charts"), one a printed
    page, every run shown: MAX_SERIES runs a chart, as many charts as that takes."""
    from openpyxl.chart import ScatterChart
    from openpyxl.worksheet.pagebreak import Break, RowBreak

    data = _write_frame(wb, "Curves", log.curves, "0.0000")
    if log.curves.empty:
        return
    ws = wb.create_sheet("Charts")
    ids = list(dict.fromkeys(log.curves["ID"]))
    chunks = [ids[i:i + MAX_SERIES] for i in range(0, len(ids), MAX_SERIES)]
    ws.row_breaks = RowBreak()
    n = 0
    for metric, title in (("val_acc", "validation accuracy"), ("epoch_test_acc", "test accuracy"),
                          ("val_loss", "validation loss")):
        for k, chunk in enumerate(chunks):
            chart = ScatterChart()
            chart.title = title + (f" (runs {k * MAX_SERIES + 1}-{k * MAX_SERIES + len(chunk)} of {len(ids)})"
                                   if len(chunks) > 1 else "")
            chart.style, chart.height, chart.width = 13, 11, 24
            chart.x_axis.title, chart.y_axis.title = "epoch", metric.replace("_", " ")
            chart.x_axis.number_format, chart.y_axis.number_format = "0", "0.00"
            chart.x_axis.delete = chart.y_axis.delete = False
            chart.legend.position = "r"
            for i, tid in enumerate(chunk):
                chart.series.append(_series(data, log, tid, metric, PALETTE[i % len(PALETTE)]))
            ws.add_chart(chart, f"A{1 + n * CHART_ROWS}")
            ws.row_breaks.append(Break(id=(n + 1) * CHART_ROWS))  # the next chart starts a page: never split
            n += 1
    ws.page_setup.orientation = "landscape"  # a 24 cm chart fits an A4 page across at 100%: no fitting, which
    ws.page_setup.paperSize = ws.PAPERSIZE_A4  # would also drop the page breaks


def _series(ws, log: Log, tid: str, metric: str, colour: str):
    """One run's `metric` per epoch from the Curves sheet `ws`, as a chart line with markers."""
    from openpyxl.chart import Reference, Series

    col = {name: i + 1 for i, name in enumerate(log.curves.columns)}
    rows = [k + 2 for k, v in enumerate(log.curves["ID"]) if v == tid]
    xs = Reference(ws, min_col=col["epoch"], min_row=rows[0], max_row=rows[-1])
    ys = Reference(ws, min_col=col[metric], min_row=rows[0], max_row=rows[-1])
    series = Series(ys, xs, title=str(tid))
    series.graphicalProperties.line.solidFill = colour
    series.graphicalProperties.line.width = 19050  # 1.5 pt
    series.marker.symbol = "circle"
    series.marker.size = 5
    series.marker.graphicalProperties.solidFill = colour
    series.marker.graphicalProperties.line.solidFill = colour
    series.smooth = False
    return series


def _letter(column: int) -> str:
    from openpyxl.utils import get_column_letter

    return get_column_letter(column)
