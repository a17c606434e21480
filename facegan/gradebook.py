"""The grader's own record of a batch: ``gradebook.csv`` written row by row, and ``report.html`` from it.

Only the grader (the parent process of facegan/grade.py) writes these, in the output folder, outside every
scratch folder.  Each row is appended, flushed and fsync'ed as soon as its submission is graded, so a batch
that is stopped (the grader killed, the machine rebooted) keeps every row graded before; rerunning the same
command reads them back and grades only the submissions that have no row yet (same file, same contents).
The report is rewritten from all the rows at the end, into a temporary file renamed over the old one.
"""
from __future__ import annotations

import csv
import html
import io
import os
from pathlib import Path

#: The only statuses a row can have; the reason column says why.
STATUSES = ("graded", "timed out", "out of memory", "crashed", "unreadable")
#: The column of the learner's own output: never the grader's word, always cut to this many characters.
LOG_COLUMN, LOG_CHARS = "learner output (log tail, not the grader's)", 300


def fields(parts) -> list[str]:
    """The gradebook's columns, in order."""
    return (["learner", "file", "points", "max_points", "status", "reason"]
            + [k for p in parts for k in (p.id, f"{p.id} message")]
            + ["training", "faces", "seconds", "sha256", LOG_COLUMN])


def read_rows(path: Path, parts) -> tuple[dict[tuple[str, str], dict], str]:
    """The rows of an earlier run of this batch, by (file, sha256); and a note when the file could not be used."""
    if not path.exists():
        return {}, ""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != fields(parts):
            return {}, f"{path} has other columns (an older grader or other parts): it is moved aside"
        rows = {}
        for row in reader:
            if None in row or any(v is None for v in row.values()) or row["status"] not in STATUSES:
                continue  # a line cut short by a kill during its write: that submission is graded again
            for key in ("points", "max_points", *(p.id for p in parts)):
                row[key] = int(row[key])
            rows[(row["file"], row["sha256"])] = row
    return rows, ""


def append_row(path: Path, row: dict, parts) -> None:
    """Append one row (the header first, on a new file), then flush and fsync: it survives a kill right after."""
    new = not path.exists() or path.stat().st_size == 0
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fields(parts))
    if new:
        writer.writeheader()
    writer.writerow({k: row.get(k, "") for k in fields(parts)})
    with open(path, "a", newline="") as f:
        f.write(buf.getvalue())  # one write: a kill leaves the whole line or none of it, all but always
        f.flush()
        os.fsync(f.fileno())
    if new:
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_aside(path: Path) -> Path:
    """Rename an unusable gradebook to gradebook.csv.old (or .old-2, ...) rather than overwrite it."""
    n, target = 1, path.with_name(path.name + ".old")
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.old-{n}")
    path.rename(target)
    return target


def write_report(rows: list[dict], parts, path: Path) -> Path:
    """An HTML page: a row per learner with the file, points, the grader's status and reason, each part's result
    (its message on failure), the faces, and the learner's own output in a marked, truncated column."""
    e = html.escape
    head = "".join(f"<th>{e(p.id)} ({p.points})</th>" for p in parts)
    body = []
    for row in rows:
        cells = "".join(f"<td class={'ok' if row[p.id] else 'no'}>{row[p.id]}"
                        + ("" if row[p.id] else f"<br><small>{e(row[p.id + ' message'])}</small>") + "</td>"
                        for p in parts)
        faces = f"<img src='{e(row['faces'])}' width=160>" if row["faces"] else ""
        reason = f"<br><small>{e(row['reason'])}</small>" if row["reason"] else ""
        body.append(f"<tr><td><b>{e(row['learner'])}</b><br><code>{e(row['file'])}</code></td>"
                    f"<td>{row['points']}/{row['max_points']}</td><td class=st>{e(row['status'])}{reason}</td>"
                    f"{cells}<td>{faces}<br><small>{e(row['training'])}</small></td>"
                    f"<td><pre class=log>{e(row[LOG_COLUMN])}</pre></td></tr>")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("<!doctype html><meta charset=utf-8><title>Gradebook</title><style>body{font-family:sans-serif}"
                   "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;max-width:22em}.ok{background:#dfd}"
                   ".no{background:#fdd}small{white-space:pre-wrap}.log{max-height:8em;overflow:auto;color:#666;"
                   "font-size:80%;white-space:pre-wrap}</style><h1>Face generation: gradebook</h1>"
                   "<table><tr><th>learner (file)</th><th>points</th><th>status (the grader's)</th>"
                   f"{head}<th>faces after training</th><th>{e(LOG_COLUMN)}</th></tr>"
                   + "\n".join(body) + "</table>")
    os.replace(tmp, path)
    return path
