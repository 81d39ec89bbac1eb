"""The results store: append-only JSON Lines, one file per table, read back as pandas.

Every record is one line of ``results/<table>.jsonl`` holding the caller's fields plus an ``env``
block (git commit, package versions, host) and a UTC timestamp. A line is written with a single
``os.write`` on a file opened with ``O_APPEND`` under an exclusive ``flock`` and then ``fsync``-ed,
so concurrent writers never interleave and a crash (even SIGKILL) loses at most the record being
written. Lines are never rewritten: corrections are new records.

Reading tolerates exactly one kind of damage silently-but-loudly: a last line without its newline
(a writer killed mid-line) is skipped with a warning. Any other undecodable line is a corrupt file
and raises :class:`ResultsCorruptError` naming the file and line, so nothing is silently dropped.

Example
-------
>>> from npas_lab import results
>>> results.append("measurements", {"model": "small_cnn", "latency_ms": 0.42})  # doctest: +SKIP
>>> results.load("measurements").latency_ms.median()  # doctest: +SKIP
"""

from __future__ import annotations

import fcntl
import functools
import json
import math
import os
import platform
import re
import subprocess
import uuid
import warnings
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from npas_lab import paths

__all__ = [
    "ResultsCorruptError",
    "append",
    "environment",
    "iter_records",
    "load",
    "new_run_id",
    "table_path",
]

_TABLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_/-]*$")
# Versions that decide a number: recorded with every record so a figure can be traced back.
_PACKAGES = ("torch", "torchvision", "apache-tvm", "apache-tvm-ffi", "numpy", "onnxruntime")


class ResultsCorruptError(RuntimeError):
    """A results file has a damaged line that is not a crash-truncated last line."""


def table_path(table: str) -> Path:
    """Return the JSON Lines file backing ``table`` (which may name a subfolder, ``a/b``).

    Parameters
    ----------
    table
        Lower-case letters, digits, ``_``, ``-`` and ``/``, e.g. ``"measurements"``.
    """
    if not isinstance(table, str) or not _TABLE_NAME.match(table) or ".." in table:
        raise ValueError(
            f"table={table!r} is not a valid results table name: use lower-case letters, digits, "
            "'_', '-' and '/' (e.g. 'measurements' or 'benchmarks/engines')"
        )
    return paths.results_dir() / f"{table}.jsonl"


@functools.cache
def _static_environment() -> dict[str, Any]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
    }


def _git_state() -> dict[str, Any]:
    # Asked per record (cheap) because a long-lived notebook kernel outlives commits.
    try:
        out = subprocess.run(
            ["git", "-C", str(paths.REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(paths.REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return {"git_commit": out, "git_dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def environment() -> dict[str, Any]:
    """Return the environment recorded with every record (git, package versions, host)."""
    return {**_static_environment(), **_git_state()}


def new_run_id() -> str:
    """Return a fresh run identifier, sortable by time (``YYYYmmdd-HHMMSS-xxxxxx``)."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def _jsonable(value: Any) -> Any:
    # NaN/inf are not JSON; None keeps the file readable by every JSON parser.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError):
            pass
    if isinstance(value, Path):
        return str(value)
    return value


def _drop_torn_tail(fd: int, path: Path) -> None:
    """Cut an incomplete last line (a writer killed mid-record) before appending after it.

    Appending to it would glue the new record onto the torn one and make a damaged line in the
    middle of the file; the torn record was never complete, so nothing recorded is lost.
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end, chunk = size, 1 << 16
    while end > 0:
        start = max(0, end - chunk)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    else:
        keep = 0
    os.ftruncate(fd, keep)
    warnings.warn(
        f"{path}: dropped an incomplete last line ({size - keep} bytes, a writer killed "
        "mid-record) before appending; every complete record is kept.",
        RuntimeWarning,
        stacklevel=3,
    )


def append(table: str, record: Mapping[str, Any], *, env: bool = True) -> dict[str, Any]:
    """Append one record to ``table`` and return it as written.

    Parameters
    ----------
    table
        Table name, see :func:`table_path`.
    record
        JSON-serialisable fields (numpy/torch scalars, tuples and paths are converted).
    env
        Add the ``env`` block (git commit, package versions, host). Keep it on for anything that
        is a result; off only for bulky per-step logs that point to a run record instead.

    Returns
    -------
    dict
        The record with ``time`` (UTC ISO-8601) and, if requested, ``env`` added.
    """
    if not isinstance(record, Mapping):
        raise TypeError(f"record must be a mapping of field -> value, got {type(record).__name__}")
    full = {"time": datetime.now(UTC).isoformat(), **_jsonable(dict(record))}
    if env:
        full["env"] = environment()
    try:
        line = json.dumps(full, allow_nan=False, sort_keys=False) + "\n"
    except (TypeError, ValueError) as err:
        raise TypeError(f"record for table {table!r} is not JSON-serialisable: {err}") from err
    path = table_path(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _drop_torn_tail(fd, path)
        data = line.encode()
        written = os.write(fd, data)
        while written < len(data):  # a short write on a local file is rare, but not impossible
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)  # also releases the lock
    return full


def iter_records(table: str) -> Iterator[dict[str, Any]]:
    """Yield the records of ``table`` in write order (none if the table does not exist yet).

    Raises
    ------
    ResultsCorruptError
        If a line other than a newline-less last line cannot be decoded.
    """
    path = table_path(table)
    if not path.exists():
        return
    with path.open("rb") as fh:
        lines = fh.read().split(b"\n")
    # After the final newline split() leaves b""; anything else there is a line cut by a crash.
    tail = lines.pop()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            yield json.loads(raw)
        except json.JSONDecodeError as err:
            raise ResultsCorruptError(
                f"{path}:{number} is not a JSON record ({err.msg}); the file was edited or "
                "damaged: move that line out (every other line is intact), then reload."
            ) from None
    if tail.strip():
        warnings.warn(
            f"{path}: skipped an incomplete last line ({len(tail)} bytes), most likely a writer "
            "killed mid-record; every earlier record was read.",
            RuntimeWarning,
            stacklevel=2,
        )


def load(table: str, *, flatten_env: bool = False) -> pd.DataFrame:
    """Return ``table`` as a DataFrame, one row per record (empty if nothing was recorded).

    Parameters
    ----------
    table
        Table name, see :func:`table_path`.
    flatten_env
        Spread the ``env`` block into ``env.*`` columns instead of one column of dicts.
    """
    rows = list(iter_records(table))
    if not rows:
        return pd.DataFrame()
    if flatten_env:
        return pd.json_normalize(rows, max_level=1)
    return pd.DataFrame.from_records(rows)
