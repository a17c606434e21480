"""The parent's verdict on what a worker reported: every record checked against a schema, every point its own.

The worker (facegan/grade_worker.py) shares its process with the learner's code, so anything it sends may have
been written by that code instead.  Here nothing it sends is taken beyond its schema: a record of a kind or
part the grader does not know, or with a field of the wrong type, is dropped (and counted in the reason); the
first record of a part is the one that counts; a part's points are its maximum if it passed and 0 otherwise,
computed here from ``facegan.classroom.PART_POINTS``, never read from the worker; training steps are clamped to
the number asked for.  How the worker ended (done, ended early, out of time, out of memory) sets the status,
one of ``gradebook.STATUSES``, with a reason in the grader's own words.
"""
from __future__ import annotations

import math
import signal

MESSAGE_CHARS = 600  # a part's message, a training message: cut to this


def _text(value, default: str = "") -> str:
    return value[:MESSAGE_CHARS] if isinstance(value, str) else default


def _number(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _training(record: dict, steps: int) -> dict:
    """A training record, each field checked; anything off the schema reads as 'failed'."""
    status = record.get("status")
    done = record.get("steps")
    done = min(max(done, 0), steps) if isinstance(done, int) and not isinstance(done, bool) else 0
    if status == "trained":
        numbers = [_number(record.get(k)) for k in ("seconds", "d_loss", "g_loss")]
        if None not in numbers:
            seconds, d_loss, g_loss = numbers
            return {"trained": True, "training": f"{done} steps in {seconds:.1f} s, D loss {d_loss:.4f}, "
                                                 f"G loss {g_loss:.4f}"}
        return {"trained": False, "training": "the training record did not match the grader's schema"}
    if status in ("failed", "skipped"):
        return {"trained": False, "training": _text(record.get("message"), status)}
    return {"trained": False, "training": "the training record did not match the grader's schema"}


def _collect(records: list, order: list[str]) -> tuple[dict, dict | None, str | None, str | None, int, bool]:
    """Walk the records in the order they came: (the counted record of each part, the training record, the
    last part started, the unreadable message, how many were dropped, whether the worker said done).

    The last record of a part counts: the worker sends its own after the learner's cell and that part's checks
    ran, so a record forged in an earlier cell (for this part or a later one) is overridden.  ``unreadable``
    counts only as the first record (the worker sends it before any learner code runs)."""
    got, training, started, unreadable, dropped, done = {}, None, None, None, 0, False
    for i, r in enumerate(records):
        kind = r.get("kind") if isinstance(r, dict) else None
        if kind == "part" and r.get("part") in order and isinstance(r.get("passed"), bool) \
                and isinstance(r.get("message"), str):
            got[r["part"]] = r
        elif kind == "start" and r.get("part") in order:
            started = r["part"]
        elif kind == "training":
            training = r
        elif kind == "unreadable" and i == 0:
            unreadable = _text(r.get("message"), "not a readable notebook")
        elif kind == "done":
            done = True
        elif not (kind == "fence" and i == 0):
            dropped += 1
    return got, training, started, unreadable, dropped, done


def _ending(ran: dict, started: str | None, done: bool) -> tuple[str, str]:
    """The status and the grader's reason, from how the worker's run ended."""
    where = f" during part {started!r}" if started else " before the first part"
    code = ran.get("returncode")
    if done and ran.get("ending") == "done":
        return "graded", ""
    if ran.get("ending") == "timeout":
        return "timed out", f"timed out: stopped after {ran.get('timeout_s')} s{where} (an endless loop?)"
    if ran.get("oom"):
        return "out of memory", (f"out of memory: the submission as a whole went over the grader's memory cap{where}"
                                 " (the kernel stopped it)")
    if isinstance(code, int) and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return "crashed", f"the submission's process was killed by {name}{where}"
    return "crashed", (f"the submission's process ended (exit code {code}){where} before grading finished: a cell "
                       "that calls os._exit(), closes the grader's pipe or crashes Python?")


def verdict(ran: dict, parts, limits) -> dict:
    """A gradebook row's grading columns from a worker's run (run_jailed's dict): status, reason, each part's
    points and message, points, training, seconds, and ``trained`` (whether to show its faces)."""
    got, training, started, unreadable, dropped, done = _collect(ran.get("records", []), [p.id for p in parts])
    status, reason = _ending(ran, started, done)
    if unreadable is not None:
        status, reason = "unreadable", unreadable
    row = {"status": status, "reason": reason, "max_points": sum(p.points for p in parts),
           "seconds": ran.get("seconds", 0.0)}
    for part in parts:
        record = got.get(part.id)
        if record is None:
            why = reason or "the worker sent no result for it"
            message = f"stopped here: {why}" if part.id == started else f"not graded: {why}"
            row[part.id], row[f"{part.id} message"] = 0, message
        else:
            row[part.id] = part.points if record["passed"] else 0
            row[f"{part.id} message"] = "passed" if record["passed"] else _text(record["message"])
    row["points"] = sum(row[p.id] for p in parts)
    row.update(_training(training or {"status": "skipped", "message": f"not run: {reason}" if reason
                                      else "not run"}, limits.steps))
    if dropped:
        row["reason"] = (row["reason"] + "; " if row["reason"] else "") + \
            f"{dropped} record(s) on the result pipe did not match the grader's schema and were ignored"
    return row
