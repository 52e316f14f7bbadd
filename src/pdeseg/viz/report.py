"""A self-contained HTML report of a comparison: table, verdicts and figures on one page.

The page references its figures by relative path (``figures/*.png`` beside it), uses
no scripts and no network, and so opens offline in any browser.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; } th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
.verdict { font-size: 1.1em; background: #f6f8fa; border-left: 4px solid #0366d6; padding: 0.6em 1em; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; border: 1px solid #eee; } .meta { font-size: 0.8em; color: #666; }
"""


def render_report(
    path: str | Path,
    title: str,
    intro: str,
    table: list[dict[str, Any]],
    columns: list[tuple[str, str]],
    verdicts: list[str],
    figures: list[tuple[str, str]],
    meta: dict[str, Any],
    tables: Sequence[tuple[str, str, list[dict[str, Any]], list[tuple[str, str]]]] = (),
) -> Path:
    """Write ``report.html``.

    Args:
        path: output file; figure paths must be relative to its folder.
        title, intro: page heading and a paragraph saying what was run.
        table: rows of the comparison table (cells already formatted as strings).
        columns: ``(heading, key)`` pairs of the table.
        verdicts: one sentence per paired comparison.
        figures: ``(relative image path, caption)``.
        meta: run facts shown at the bottom (environment, config).
        tables: further tables after the results, ``(heading, note, rows, columns)`` each
            (cells already formatted; ``note`` a sentence under the heading, may be empty).

    Raises:
        FileNotFoundError: a referenced figure does not exist next to the report.
    """
    path = Path(path)
    missing = [f for f, _ in figures if not (path.parent / f).is_file()]
    if missing:
        raise FileNotFoundError(f"report figures not found next to {path}: {missing}")
    esc = html.escape
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1><p>{esc(intro)}</p>",
        "<h2>Verdict</h2>" + "".join(f"<p class='verdict'>{esc(v)}</p>" for v in verdicts),
        f"<h2>Results</h2>{_table_html(table, columns)}",
    ]
    for heading, note, rows, cols in tables:
        parts.append(f"<h2>{esc(heading)}</h2>" + (f"<p>{esc(note)}</p>" if note else "") + _table_html(rows, cols))
    for src, caption in figures:
        parts.append(f"<figure><img src='{esc(src)}' alt='{esc(caption)}'><figcaption>{esc(caption)}</figcaption></figure>")
    parts.append("<h2>Run</h2><table>" + "".join(
        f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in meta.items()) + "</table>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _table_html(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h, _ in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(r.get(k, '-')))}</td>" for _, k in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def referenced_files(path: str | Path) -> list[Path]:
    """Local files an HTML report references through ``src=`` or ``href=`` (for checks)."""
    import re

    path = Path(path)
    refs = re.findall(r"""(?:src|href)=['"]([^'"#]+)['"]""", path.read_text(encoding="utf-8"))
    return [path.parent / r for r in refs if "://" not in r]
