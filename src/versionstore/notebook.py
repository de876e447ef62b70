"""Notebook views: the HTML and SVG that Jupyter shows for repositories, snapshots and diffs.

``Repository``, ``SnapshotInfo``, ``History`` (what ``ancestry()`` returns)
and ``Diff`` (also what ``Session.status()`` returns) have a
``_repr_html_`` built from the functions here. Pure HTML and inline SVG: no
JavaScript, no stylesheet, nothing fetched. Every piece of user text — branch
and tag names, messages, metadata, keys, array paths — goes through
``html.escape``, so a message like ``<script>`` shows as text.

The functions take plain values (not the records), so this module depends
on nothing else in the package.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

__all__ = ["chunk_grid_svg", "diff_html", "history_html", "ref_labels", "repository_html",
           "snapshot_html", "table_html"]

_STYLE = "border-collapse:collapse;font-family:monospace;font-size:12px"
_CELL = "border:1px solid #ccc;padding:2px 6px;text-align:left"
#: The largest chunk grid drawn cell by cell (per axis); larger grids are binned.
_MAX_CELLS = 40
_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _short(snapshot_id: str | None) -> str:
    return "" if snapshot_id is None else snapshot_id[:12]


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def table_html(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A small HTML table; every cell is escaped."""
    head = "".join(f'<th style="{_CELL}">{_e(h)}</th>' for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td style="{_CELL}">{_e(c)}</td>' for c in row) + "</tr>"
        for row in rows
    )
    return f'<table style="{_STYLE}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def snapshot_html(snapshot_id: str, parent_ids: Sequence[str], written_at: datetime,
                  message: str, metadata: Mapping[str, Any]) -> str:
    """One snapshot as a two-column table."""
    rows: list[tuple[str, str]] = [
        ("snapshot", snapshot_id),
        ("parent", ", ".join(parent_ids) or "(none)"),
        ("written", _time(written_at)),
        ("message", message),
    ]
    if metadata:
        rows.append(("metadata", json.dumps(metadata, default=repr, sort_keys=True)))
    return f"<div><strong>Snapshot</strong>{table_html(('', ''), rows)}</div>"


def _history_svg(rows: Sequence[tuple[str, Sequence[str], datetime, str]]) -> str:
    """Snapshots as dots, newest on top, a line from each to each parent shown (merges too)."""
    lanes: list[str | None] = []
    placed: dict[str, tuple[int, int]] = {}
    for row, (snapshot_id, parents, _, _) in enumerate(rows):
        lane = lanes.index(snapshot_id) if snapshot_id in lanes else None
        if lane is None:
            lane = lanes.index(None) if None in lanes else len(lanes)
            if lane == len(lanes):
                lanes.append(None)
        lanes[lane] = parents[0] if parents else None
        for extra in parents[1:]:
            if extra not in lanes:
                free = lanes.index(None) if None in lanes else len(lanes)
                if free == len(lanes):
                    lanes.append(None)
                lanes[free] = extra
        placed[snapshot_id] = (lane, row)
    step, radius = 22, 5
    width = 16 * max(1, len(lanes)) + 8
    height = step * len(rows) + 4
    shapes = []
    for snapshot_id, parents, _, _ in rows:
        lane, row = placed[snapshot_id]
        x, y = 10 + 16 * lane, 12 + step * row
        for parent in parents:
            if parent in placed:
                p_lane, p_row = placed[parent]
                colour = _COLOURS[p_lane % len(_COLOURS)]
                shapes.append(f'<line x1="{x}" y1="{y}" x2="{10 + 16 * p_lane}" '
                              f'y2="{12 + step * p_row}" stroke="{colour}" stroke-width="2"/>')
            else:  # the parent is further back than shown
                shapes.append(f'<line x1="{x}" y1="{y}" x2="{x}" y2="{height}" '
                              'stroke="#bbb" stroke-width="2" stroke-dasharray="3,3"/>')
    for snapshot_id, _, _, _ in rows:
        lane, row = placed[snapshot_id]
        colour = _COLOURS[lane % len(_COLOURS)]
        shapes.append(f'<circle cx="{10 + 16 * lane}" cy="{12 + step * row}" r="{radius}" '
                      f'fill="{colour}"><title>{_e(snapshot_id)}</title></circle>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img" aria-label="history graph">{"".join(shapes)}</svg>')


def history_html(rows: Sequence[tuple[str, Sequence[str], datetime, str]],
                 labels: Mapping[str, Sequence[str]] | None = None,
                 more: bool = False) -> str:
    """A history: an SVG graph beside a table (id, refs, time, message), newest first.

    ``rows`` are ``(id, parent ids, written_at, message)``; ``labels`` maps an
    id to the branch and tag names pointing at it; ``more`` says the history
    goes on beyond the rows shown.
    """
    labels = labels or {}
    step = 22
    cells = []
    for snapshot_id, _, written_at, message in rows:
        names = " ".join(f"[{_e(n)}]" for n in labels.get(snapshot_id, ()))
        cells.append(
            f'<tr style="height:{step}px"><td style="{_CELL}" title="{_e(snapshot_id)}">'
            f'{_e(_short(snapshot_id))}</td><td style="{_CELL}">{names}</td>'
            f'<td style="{_CELL}">{_e(_time(written_at))}</td>'
            f'<td style="{_CELL}">{_e(message)}</td></tr>'
        )
    tail = "<div><em>… older snapshots not shown</em></div>" if more else ""
    graph = _history_svg(rows) if rows else ""
    return (f'<div style="display:flex;align-items:flex-start;gap:4px">'
            f'<div style="padding-top:24px">{graph}</div>'
            f'<table style="{_STYLE}"><thead><tr><th style="{_CELL}">snapshot</th>'
            f'<th style="{_CELL}">refs</th><th style="{_CELL}">written</th>'
            f'<th style="{_CELL}">message</th></tr></thead><tbody>{"".join(cells)}</tbody>'
            f"</table></div>{tail}")


def chunk_grid_svg(grid: Sequence[int], changed: Iterable[Sequence[int]]) -> str:
    """A picture of an array's chunk grid (1–3 dimensions) with changed chunks filled.

    Grids over 40 chunks along an axis are binned (a cell is filled when any
    chunk in it changed); a 3-D grid is drawn as one 2-D grid per index of
    its first axis (at most 8, then binned). Returns ``""`` for other ranks.
    """
    if not 1 <= len(grid) <= 3 or any(n <= 0 for n in grid):
        return ""
    shape = [1] * (3 - len(grid)) + list(grid)
    limits = [min(shape[0], 8), min(shape[1], _MAX_CELLS), min(shape[2], _MAX_CELLS)]
    marked = set()
    for coords in changed:
        full = [0] * (3 - len(coords)) + list(coords)
        if len(full) != 3 or any(not 0 <= c < n for c, n in zip(full, shape, strict=True)):
            continue
        marked.add(tuple(c * lim // n for c, lim, n in zip(full, limits, shape, strict=True)))
    cell = 8 if max(limits[1:]) > 20 else 12
    gap = 6
    panel_width = limits[2] * cell
    shapes = []
    for panel in range(limits[0]):
        left = panel * (panel_width + gap)
        for row in range(limits[1]):
            for column in range(limits[2]):
                fill = "#dd8452" if (panel, row, column) in marked else "#eeeeee"
                shapes.append(f'<rect x="{left + column * cell}" y="{row * cell}" '
                              f'width="{cell - 1}" height="{cell - 1}" fill="{fill}"/>')
    width = limits[0] * (panel_width + gap)
    height = limits[1] * cell
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img" aria-label="changed chunks">{"".join(shapes)}</svg>')


def diff_html(fields: Mapping[str, Iterable[str]],
              chunks: Mapping[str, Iterable[Sequence[int]]],
              grids: Mapping[str, Sequence[int]] | None = None,
              counts: Mapping[str, tuple[int, int, int]] | None = None) -> str:
    """A diff: node changes as a table, then per array its changed chunks (and a picture).

    ``counts`` gives, per array, the chunks added, changed and removed.
    """
    grids = grids or {}
    counts = counts or {}
    rows = [(name.replace("_", " "), path) for name, paths in fields.items()
            for path in sorted(paths)]
    if not rows and not chunks:
        return "<div><em>no changes</em></div>"
    parts = ["<div><strong>Changes</strong>"]
    if rows:
        parts.append(table_html(("change", "path"), rows))
    for path, coords in sorted(chunks.items()):
        listed = sorted(tuple(c) for c in coords)
        shown = ", ".join(str(list(c)) for c in listed[:20])
        more = f" … and {len(listed) - 20} more" if len(listed) > 20 else ""
        picture = chunk_grid_svg(grids[path], listed) if path in grids else ""
        split = ""
        if path in counts:
            added, changed, removed = counts[path]
            split = f" ({added} added, {changed} rewritten, {removed} removed)"
        parts.append(f"<div><strong>{_e(path)}</strong>: {len(listed)} chunk(s) changed"
                     f"{split}<div>{picture}</div>"
                     f'<div style="font-family:monospace;font-size:11px">'
                     f"{_e(shown)}{_e(more)}</div></div>")
    parts.append("</div>")
    return "".join(parts)


def ref_labels(branches: Mapping[str, str], tags: Mapping[str, str]) -> dict[str, list[str]]:
    """Snapshot id -> the names pointing at it (``"main"``, ``"tag: v1"``), for history tables."""
    labels: dict[str, list[str]] = {}
    for name, snapshot_id in sorted(branches.items()):
        labels.setdefault(snapshot_id, []).append(name)
    for name, snapshot_id in sorted(tags.items()):
        labels.setdefault(snapshot_id, []).append(f"tag: {name}")
    return labels


def repository_html(title: str, branches: Mapping[str, str], tags: Mapping[str, str],
                    recent: Sequence[tuple[str, Sequence[str], datetime, str]],
                    more: bool) -> str:
    """A repository: its branches and tags, and the last few snapshots of ``main``."""
    labels = ref_labels(branches, tags)
    refs = table_html(("kind", "name", "snapshot"), [
        *(("branch", n, _short(s)) for n, s in sorted(branches.items())),
        *(("tag", n, _short(s)) for n, s in sorted(tags.items())),
    ])
    return (f"<div><strong>{_e(title)}</strong>{refs}<div>Recent snapshots on main</div>"
            f"{history_html(recent, labels, more)}</div>")
