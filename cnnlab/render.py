"""A training log's rows for the terminal and for other programs: `cnnlab runs` in every --format.

- `table`: a rich table fitted to the terminal's width. Columns are kept in order of importance while they
  fit whole (a number or an ID is never cut: cut, 0.003 reads 0.00 and FINISHED reads FINISHE); text
  columns (the changes) wrap; the columns left out are named under the table.
- `tsv`, `csv`, `md`: every column, each value whole; tsv and csv write numbers plainly (1080.7, not
  1,080.7; an integer as 3, not 3.0) so that other programs read them back as numbers.
"""

from __future__ import annotations

import csv
import io
from typing import List, Sequence

# `cnnlab runs` keeps columns in this order while they fit (those not named here come after them all)
PRIORITY = ("id", "test acc", "changes", "status", "mean test", "± std", "seeds", "arch", "lr", "batch", "epochs",
            "training", "tta acc", "val acc", "target acc", "data")
TEXT_MIN = 14  # the narrowest a wrapping text column gets
FORMATS = ("table", "tsv", "csv", "md")


def plain(column, value) -> str:
    """A value as other programs read it: no thousands separators, integers without a fraction."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and column.fmt in ("int", "count"):
        return str(int(round(value)))
    if isinstance(value, float) and column.fmt in ("mflops", "seconds"):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return column.text(value).replace(",", "") if column.fmt != "text" else str(value)


def fit(columns: Sequence, rows: List[List[str]], width: int) -> List[int]:
    """Indices of the columns to show, in their order, that fit in `width` characters whole (rich's table
    spends 3 characters a column on padding and rules, plus 1)."""
    def need(i: int) -> int:
        natural = max([len(columns[i].short)] + [len(line) for row in rows for line in row[i].splitlines() or [""]])
        return min(natural, TEXT_MIN) if columns[i].width else natural

    rank = {name: r for r, name in enumerate(PRIORITY)}
    order = sorted(range(len(columns)), key=lambda i: rank.get(columns[i].short, len(PRIORITY)))
    chosen, used = [], 1
    for i in order:
        if used + need(i) + 3 <= width or not chosen:
            chosen.append(i)
            used += need(i) + 3
    return sorted(chosen)


def table(columns: Sequence, rows: List[List[str]], *, title: str, best, width: int):
    """The rich Table of `rows` that fits `width`, and the names of the columns left out."""
    from rich.table import Table

    keep = fit(columns, rows, width)
    out = Table(title=title, show_lines=False)
    for i in keep:
        c = columns[i]
        out.add_column(c.short, justify="left" if c.fmt == "text" else "right", no_wrap=not c.width,
                       overflow="fold", min_width=min(TEXT_MIN, max(len(r[i]) for r in rows) if rows else 0)
                       if c.width else None)
    for r, cells in enumerate(rows):
        out.add_row(*[cells[i] for i in keep], style="bold" if r == best else None)
    left_out = [columns[i].short for i in range(len(columns)) if i not in keep]
    if left_out:
        out.caption = f"not shown at {width} columns: {', '.join(left_out)} (a wider terminal, or --format tsv)"
    return out


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP's CSV-injection rule


def neutralised(value):
    """A text cell a spreadsheet would run as a formula, made text: a leading apostrophe."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def lines(fmt: str, columns: Sequence, values: List[list], headers: bool = False) -> str:
    """`values` (one list per row, a value per column) as tsv, csv or md text; headers: the columns' full headers
    (the workbook's) rather than their short names (the terminal's)."""
    header = [c.header if headers else c.short for c in columns]
    if fmt == "md":
        rows = [[c.text(v) for c, v in zip(columns, row)] for row in values]
        body = ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in rows]
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *body])
    rows = [[plain(c, v) for c, v in zip(columns, row)] for row in values]
    if fmt == "tsv":
        return "\n".join("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in cells)
                         for cells in [header, *rows])
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *[[neutralised(cell) for cell in cells] for cells in rows]])
    return out.getvalue().rstrip("\n")
