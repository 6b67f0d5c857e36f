"""Static HTML pieces for the study report: tables with readable numbers, figures with their SVG, the page shell.

No template engine: the page is small, and escaping every value with ``html.escape`` is all the safety it needs.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d232a; margin: 0;
       background: #f6f7f9; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; border-bottom: 2px solid #e3e6ea; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 20px 0 6px; }
.meta { color: #555; margin: 0 0 12px; } .meta code { background: #f0f2f4; padding: 1px 4px; border-radius: 3px; }
nav { background: #f0f4f8; padding: 8px 14px; border-radius: 6px; margin: 12px 0 8px; }
nav a { margin-right: 16px; white-space: nowrap; color: #1a5fb4; text-decoration: none; }
nav a:hover { text-decoration: underline; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 8px 12px; margin: 10px 0; }
.explain { color: #333; max-width: 980px; }
.scroll { overflow-x: auto; margin: 8px 0 4px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d9dde2; padding: 3px 8px; }
th { background: #eef1f4; text-align: left; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.yes { color: #0a7a33; font-weight: 600; } td.no { color: #a61b1b; }
p.caption { font-weight: 600; margin: 16px 0 2px; }
td.key { white-space: nowrap; }
figure { margin: 12px 0 20px; } figure img { max-width: 100%; height: auto; border: 1px solid #e3e6ea; }
figcaption { color: #444; font-size: 13px; max-width: 980px; }
"""


def fmt(value) -> tuple[str, str]:
    """(text, css class) of one cell: 4 significant digits for floats, integers as integers, booleans as yes/no,
    missing values as '–'."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return "–", "num"
    if isinstance(value, (bool, np.bool_)):
        return ("yes", "yes") if value else ("no", "no")
    if isinstance(value, (int, np.integer)):
        return str(int(value)), "num"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return (str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"), "num"
    text = str(value)
    return text, {"yes": "yes", "no": "no"}.get(text, "")


def table(df: pd.DataFrame, table_id: str, caption: str = "", *, index: bool = True,
          row_ids: Iterable[str] | None = None) -> str:
    """``df`` as an HTML table with ``id=table_id``; each body row gets ``data-key`` = its index label(s) (or
    ``row_ids``), so readers and tests can find a trial's row."""
    df = df.copy()
    if index:
        names = [n if n is not None else "" for n in df.index.names]
        df = df.reset_index()
        df.columns = names + list(df.columns[len(names):])
    cols = [" / ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in df.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    keys = list(row_ids) if row_ids is not None else [None] * len(df)
    body = []
    for key, (_, row) in zip(keys, df.iterrows()):
        cells = []
        for i, v in enumerate(row.tolist()):
            text, cls = fmt(v)
            cls = "key" if i == 0 and cls == "" else cls  # the row's name: keep it on one line
            cells.append(f'<td class="{cls}">{html.escape(text)}</td>' if cls else f"<td>{html.escape(text)}</td>")
        attr = f' data-key="{html.escape(str(key))}"' if key is not None else ""
        body.append(f"<tr{attr}>{''.join(cells)}</tr>")
    cap = f'<p class="caption">{html.escape(caption)}</p>' if caption else ""
    return (f'{cap}<div class="scroll"><table id="{html.escape(table_id)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def figure(paths: dict[str, Path], root: Path, caption: str, alt: str) -> str:
    """An <img> of the PNG (relative to the report) with a link to the SVG."""
    png, svg = (paths[k].relative_to(root).as_posix() for k in ("png", "svg"))
    return (f'<figure><img src="{html.escape(png)}" alt="{html.escape(alt)}" loading="eager">'
            f'<figcaption>{caption} <a href="{html.escape(svg)}">SVG</a></figcaption></figure>')


def paragraph(text: str, cls: str = "explain") -> str:
    """A paragraph of trusted, already-escaped text (the report's own prose, which uses a few entities)."""
    return f'<p class="{cls}">{text}</p>'


def page(title: str, meta: str, sections: list[tuple[str, str, str]], notes: list[str]) -> str:
    """The whole document: title, meta line, table of contents, notes, then (id, heading, body) sections."""
    nav = " ".join(f'<a href="#{sid}">{html.escape(heading)}</a>' for sid, heading, _ in sections)  # spaces: wrap
    note_html = "".join(paragraph(n, "note") for n in notes)
    body = "".join(f'<section id="{sid}"><h2>{html.escape(heading)}</h2>{content}</section>'
                   for sid, heading, content in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body><main><h1>{html.escape(title)}</h1><p class="meta">{meta}</p><nav>{nav}</nav>{note_html}'
            f"{body}</main></body></html>\n")
