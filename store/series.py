"""A job's metric series for plotting: every point read as columns in one scan, and cut to a
few thousand points without losing their spikes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC

import numpy as np
from sqlalchemy import DateTime, Text, cast, func, select, type_coerce
from sqlalchemy.orm import Session

from store.models import MetricPoint


@dataclass
class MetricColumns:
    """A job's metric rows in step order, n of them, as arrays."""

    steps: np.ndarray  # int64 (n,)
    epochs: np.ndarray  # int64 (n,)
    at: np.ndarray  # float64 (n,): each row's created_at, seconds since the Unix epoch
    # name -> (the rows that report it: int64 (m,), its values there: float64 (m,), NaN for null)
    series: dict[str, tuple[np.ndarray, np.ndarray]]


def read_columns(session: Session, job_id: str) -> MetricColumns:
    if session.get_bind().dialect.name == "postgresql":
        return read_columns_postgres(session, job_id)
    return read_columns_portable(session, job_id)


def read_columns_postgres(session: Session, job_id: str) -> MetricColumns:
    """The names first, then one scan that returns one array per column and per name, in binary:
    no Python object per row. A hundred thousand rows take a few hundred milliseconds."""
    names = sorted(
        session.scalars(
            select(func.jsonb_object_keys(MetricPoint.values)).where(MetricPoint.job_id == job_id).distinct()
        )
    )
    if not names:
        return _empty()
    # One array per name: the value, NaN for a JSON null (JSONB holds no NaN of its own), SQL
    # NULL where the row does not report the name. Values are numbers or null: the runner writes floats.
    per_name = "".join(
        f", array_agg(coalesce((values ->> %(n{i})s)::float8, CASE WHEN values ? %(n{i})s THEN 'NaN'::float8 END))"
        for i in range(len(names))
    )
    # The aggregates of one scan see its rows in the same order, so the arrays line up; they
    # are put in step order here rather than sorted once per aggregate in the database.
    query = (
        "SELECT array_agg(step), array_agg(epoch), array_agg(extract(epoch FROM created_at)::float8)"
        f"{per_name} FROM metric_points WHERE job_id = %(job_id)s"
    )
    # The session's own connection (same transaction), asked for binary results, which
    # SQLAlchemy's execute cannot: float8 arrays then load without parsing text.
    driver = session.connection().connection.driver_connection
    with driver.cursor(binary=True) as cursor:
        cursor.execute(query, {"job_id": job_id, **{f"n{i}": name for i, name in enumerate(names)}})
        steps, epochs, at, *arrays = cursor.fetchone()
    order = np.argsort(np.array(steps, dtype=np.int64), kind="stable")
    series = {}
    for name, reported in zip(names, arrays):
        present = np.array([value is not None for value in reported], dtype=bool)[order]
        values = np.array(reported, dtype=np.float64)[order]
        rows = np.flatnonzero(present)
        series[name] = (rows, values[rows])
    return MetricColumns(
        np.array(steps, dtype=np.int64)[order],
        np.array(epochs, dtype=np.int64)[order],
        np.array(at, dtype=np.float64)[order],
        series,
    )


def read_columns_portable(session: Session, job_id: str) -> MetricColumns:
    """Any database (SQLite in the embedded service): one query, the rows' JSON parsed in one call."""
    rows = (
        session.connection()
        .execute(
            select(
                MetricPoint.step,
                MetricPoint.epoch,
                type_coerce(MetricPoint.created_at, DateTime()),
                cast(MetricPoint.values, Text),
            )
            .where(MetricPoint.job_id == job_id)
            .order_by(MetricPoint.step)
        )
        .all()
    )
    if not rows:
        return _empty()
    steps, epochs, at, texts = zip(*rows)
    reported = json.loads("[" + ",".join(texts) + "]")
    series = {}
    for name in sorted(set().union(*reported)):
        where = [i for i, values in enumerate(reported) if name in values]
        series[name] = (np.array(where, dtype=np.int64), np.array([reported[i][name] for i in where], dtype=np.float64))
    # A plain DateTime skips UTCDateTime's per-row work; SQLite's times come back naive, in UTC.
    seconds = [(t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp() for t in at]
    return MetricColumns(
        np.array(steps, dtype=np.int64), np.array(epochs, dtype=np.int64), np.array(seconds, dtype=np.float64), series
    )


def _empty() -> MetricColumns:
    return MetricColumns(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), {})


def keep_extremes(steps: np.ndarray, values: np.ndarray, points: int) -> np.ndarray:
    """The indices, ascending, of at most ``points`` points of one series: its first and last
    point, and in each of ``(points - 2) // 2`` equal ranges of steps the point with the lowest
    and the one with the highest value (the earliest of equals), so that a spike survives
    however narrow it is.

    steps: int64 (n,), ascending; values: float64 (n,), NaN where a point has no value (such a
    point is never a bucket's extreme, but may be the first or the last). O(n): the buckets are
    runs of the sorted steps, reduced in place."""
    n = len(steps)
    if n <= points:
        return np.arange(n)
    ends = np.array([0, n - 1])
    buckets = (points - 2) // 2
    valued = np.flatnonzero(~np.isnan(values))
    if buckets == 0 or len(valued) == 0:
        return ends
    span = int(steps[-1] - steps[0]) + 1
    bucket = (steps[valued] - steps[0]) * buckets // span  # (m,), non-decreasing, in [0, buckets)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])  # where each non-empty bucket begins
    v = values[valued]
    extremes = []
    for reduce in (np.minimum, np.maximum):
        # The points equal to their bucket's extreme; the first of them in each bucket is kept.
        best = np.repeat(reduce.reduceat(v, starts), np.diff(np.r_[starts, len(v)]))
        hits = np.flatnonzero(v == best)
        extremes.append(valued[hits[np.r_[True, bucket[hits][1:] != bucket[hits][:-1]]]])
    return np.unique(np.concatenate([ends, *extremes]))
