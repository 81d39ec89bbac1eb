"""Parameter auto-tuning of a kernel: measure its configuration space, remember the best.

:func:`tune_kernel` builds and times up to ``budget`` points of
:func:`~npas_lab.compiler.kernels.config_space` in this process, re-measures the three fastest
side by side (interleaved, so drift on a shared machine hits them alike), and appends the result
to a :class:`TuningDatabase`. The database is append-only JSON Lines keyed by (target, spec,
scheme, block, hash of the weight's non-zero structure): a later call with the same key rebuilds
the best kernel without measuring anything, and so does another process.

Latency figure: the minimum per-run time over short repeats (``min_ms``). Interference from
other jobs only ever adds time, so on a shared machine the minimum ranks configurations more
reproducibly than the median; both are stored.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from npas_lab import paths
from npas_lab.compiler.kernels.lower import (
    TEMPLATE_VERSION,
    config_space,
    conv_kernel,
    target_lanes,
)
from npas_lab.compiler.kernels.runtime import (
    build_kernel,
    kernel_args,
    target_json,
    time_function,
    time_interleaved,
    timing_bias,
)
from npas_lab.compiler.kernels.spec import ConvSpec, Kernel, structure_hash

__all__ = ["MEASUREMENTS", "TuningDatabase", "default_database_path", "tune_kernel", "tuning_key"]

#: Candidate measurements made by :func:`tune_kernel` in this process (tests check that a
#: database hit adds none).
MEASUREMENTS = {"count": 0}
_REFINE = 3


def default_database_path() -> Path:
    """Return ``results/tuning/kernels.jsonl`` (under ``$NPAS_LAB_HOME`` when set)."""
    return paths.results_dir() / "tuning" / "kernels.jsonl"


class TuningDatabase:
    """Append-only JSON Lines of tuning records; the last record of a key wins.

    Parameters
    ----------
    path
        The file; default :func:`default_database_path`.

    Examples
    --------
    >>> db = TuningDatabase(tmp_path / "k.jsonl")  # doctest: +SKIP
    >>> db.lookup(key) is None  # doctest: +SKIP
    True
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_database_path()

    def records(self) -> Iterator[dict[str, Any]]:
        """Yield the records in write order (a crash-truncated last line is skipped)."""
        if not self.path.exists():
            return
        lines = self.path.read_bytes().split(b"\n")
        tail = lines.pop()
        for number, raw in enumerate(lines, start=1):
            if raw.strip():
                try:
                    yield json.loads(raw)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{self.path}:{number} is not a JSON record: {err}") from None
        if tail.strip():
            warnings.warn(f"{self.path}: skipped an incomplete last line", stacklevel=2)

    def lookup(self, key: str) -> dict[str, Any] | None:
        """Return the last record of ``key``, or None."""
        found = None
        for record in self.records():
            if record.get("key") == key:
                found = record
        return found

    def commit(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line (locked, flushed and fsync-ed)."""
        line = (json.dumps(dict(record), sort_keys=True) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            written = os.write(fd, line)
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            os.close(fd)

    def __len__(self) -> int:
        return sum(1 for _ in self.records())


def tuning_key(
    target: str, spec: ConvSpec, scheme: str, block: tuple[int, int] | None, mask: str
) -> str:
    """Return the database key: a hash of target JSON, spec, scheme, block, mask hash and
    :data:`~npas_lab.compiler.kernels.lower.TEMPLATE_VERSION`."""
    blob = json.dumps(
        {
            "version": TEMPLATE_VERSION,
            "target": target,
            "spec": spec.to_dict(),
            "scheme": scheme,
            "block": list(block) if block else None,
            "mask": mask,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def tune_kernel(
    spec: ConvSpec,
    weight: np.ndarray,
    scheme: str,
    *,
    block: tuple[int, int] | None = None,
    target: Mapping[str, Any] | None = None,
    budget: int = 16,
    database: str | os.PathLike | TuningDatabase | None = None,
    progress: bool = True,
) -> tuple[Kernel, float]:
    """Return the fastest kernel of ``scheme`` for ``weight`` on ``target`` and its latency (ms).

    Parameters
    ----------
    spec, weight, scheme, block
        As for :func:`~npas_lab.compiler.kernels.conv_kernel`.
    target
        TVM target dict of a CPU this process runs on; default this CPU (all its cores).
    budget
        Configurations measured at most (the most promising of the space first).
    database
        A :class:`TuningDatabase` or its path; default ``results/tuning/kernels.jsonl``.
    progress
        Print one line per candidate to stderr.

    Returns
    -------
    (Kernel, float)
        The best kernel and its ``min_ms`` (module docstring). On a database hit nothing is
        measured and the stored figure is returned.
    """
    weight = spec.check_weight(weight)
    if target is None:
        from npas_lab.devices.profiles import host_cpu_target  # devices/ imports compiler/

        target = host_cpu_target()
    db = database if isinstance(database, TuningDatabase) else TuningDatabase(database)
    tjson = target_json(target)
    key = tuning_key(tjson, spec, scheme, block, structure_hash(weight))
    hit = db.lookup(key)
    if hit is not None:
        _log(progress, f"tune {scheme} {spec.weight_shape}: database hit ({hit['ms']:.3f} ms)")
        return conv_kernel(spec, weight, scheme, block=block, config=hit["config"]), hit["ms"]
    space = config_space(spec, scheme, block=block, lanes=target_lanes(target))[: max(1, budget)]
    rng = np.random.default_rng(0)
    data = rng.standard_normal(spec.in_shape).astype(np.float32)
    bias = timing_bias(spec)
    built, candidates = {}, []
    for n, config in enumerate(space):
        kernel = conv_kernel(spec, weight, scheme, block=block, config=config)
        lib = build_kernel(kernel, target)
        args = kernel_args(kernel, data, bias=bias)
        timing = time_function(lib, args, repeat=15, min_repeat_ms=2.0)
        MEASUREMENTS["count"] += 1
        built[n] = (kernel, lib, args)
        candidates.append({"config": config, "ms": timing.ms, "min_ms": timing.min_ms})
        _log(progress, f"  [{n + 1}/{len(space)}] {config} -> {timing.min_ms:.3f} ms (min)")
    ranked = sorted(range(len(candidates)), key=lambda n: candidates[n]["min_ms"])[:_REFINE]
    if len(ranked) > 1:
        # More samples of the leaders, side by side; the minimum over both passes is each one's
        # figure (a noisy phase during the second pass must not overrule a clean first pass).
        refined = time_interleaved(
            {str(n): built[n][1:] for n in ranked}, rounds=12, min_repeat_ms=2.0
        )
        for n in ranked:
            candidates[n]["min_ms"] = min(candidates[n]["min_ms"], refined[str(n)].min_ms)
            candidates[n]["refined_ms"] = refined[str(n)].ms
    best = min(ranked, key=lambda n: candidates[n]["min_ms"])
    ms, median = (
        candidates[best]["min_ms"],
        candidates[best].get("refined_ms", candidates[best]["ms"]),
    )
    db.commit(
        {
            "key": key,
            "time": datetime.now(UTC).isoformat(),
            "target": tjson,
            "spec": spec.to_dict(),
            "scheme": scheme,
            "block": list(block) if block else None,
            "mask": structure_hash(weight),
            "config": candidates[best]["config"],
            "ms": ms,
            "median_ms": median,
            "candidates": candidates,
        }
    )
    _log(progress, f"tune {scheme} {spec.weight_shape}: best {candidates[best]['config']} {ms:.3f}")
    return built[best][0], ms
