"""Self-contained HTML pages for `cnnlab report` and `cnnlab compare`: one file, images embedded as data URIs,
no script and nothing fetched, so that it opens offline and can be mailed or logged as an MLflow artifact."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, List, Optional, Sequence

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em auto; max-width: 1320px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; } .missing { color: #8a5a00; background: #fff6e0; padding: 0.4em 0.7em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.changed td { background: #fff3c4; } tr.best td { font-weight: bold; }
img { max-width: 100%; } .grid { display: flex; flex-wrap: wrap; gap: 0.6em; }
.grid figure { margin: 0; text-align: center; font-size: 0.75em; }
.grid img { width: 96px; height: 96px; image-rendering: pixelated; }
.scroll { overflow-x: auto; }
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def metric(key: str, value: Optional[float]) -> str:
    """A recorded metric as people read it: counts whole, seconds with a unit, scores to 4 places."""
    if value is None or value != value:
        return ""
    if key in ("params", "flops", "best_epoch", "epochs_run"):
        return f"{int(value):,}"
    if key.endswith("_time"):
        return f"{value:.1f} s"
    return number(value)


def table(header: Optional[Sequence[str]], rows: Sequence[Sequence[Any]], *, numeric: Sequence[int] = (),
          classes: Optional[Sequence[str]] = None, raw: Sequence[int] = ()) -> str:
    """An HTML table (no header row when `header` is None); cells are escaped, except in the `raw` columns
    (HTML made here, such as images); columns in `numeric` right-aligned; classes: one CSS class per row."""
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header is not None else ""
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = "".join(f"<td>{c}</td>" if j in raw else f'<td class="num">{esc(c)}</td>' if j in numeric
                        else f"<td>{esc(c)}</td>" for j, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<div class="scroll"><table>{head}{"".join(body)}</table></div>'


def image(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{esc(alt)}">'


def missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def paragraph(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def section(title: str, *parts: str) -> str:
    return f"<h2>{esc(title)}</h2>\n" + "\n".join(p for p in parts if p)


def page(title: str, subtitle: str, sections: List[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>\n'
            f'<body><h1>{esc(title)}</h1><p class="sub">{esc(subtitle)}</p>\n' + "\n".join(sections) +
            "\n</body></html>\n")


def write(text: str, path: Path) -> Path:
    """Write the page aside and move it into place: a reader never sees half a report."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
