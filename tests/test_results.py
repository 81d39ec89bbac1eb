"""The results store: append-only JSON Lines that survive a killed writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npas_lab import results


def test_round_trip_with_environment():
    results.append("measurements", {"model": "small_cnn", "latency_ms": 0.5, "shape": (1, 3)})
    results.append("measurements", {"model": "resnet18", "latency_ms": 2.0})
    df = results.load("measurements")
    assert list(df.model) == ["small_cnn", "resnet18"]
    assert df.latency_ms.tolist() == [0.5, 2.0]
    env = df.env.iloc[0]
    assert env["packages"]["torch"] == "2.14.1"
    assert env["packages"]["apache-tvm"] == "0.27.0.post1"
    assert len(env["git_commit"] or "") in (0, 40)
    assert df["shape"].iloc[0] == [1, 3]  # tuples are stored as JSON lists


def test_missing_table_is_empty_and_nested_names_work():
    assert results.load("nothing_yet").empty
    results.append("benchmarks/engines", {"x": 1}, env=False)
    assert results.table_path("benchmarks/engines").exists()
    assert results.load("benchmarks/engines").x.tolist() == [1]


@pytest.mark.parametrize("bad", ["", "../escape", "Upper", "a b", "/abs"])
def test_bad_table_names_are_refused(bad):
    with pytest.raises(ValueError, match="valid results table name"):
        results.append(bad, {"x": 1})


def test_non_finite_floats_become_null_and_unserialisable_values_are_named():
    results.append("t", {"nan": float("nan")}, env=False)
    assert results.load("t").nan.isna().all()
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        results.append("t", {"obj": object()}, env=False)


def test_truncated_last_line_is_skipped_with_a_warning():
    for i in range(3):
        results.append("t", {"i": i}, env=False)
    with results.table_path("t").open("a") as fh:
        fh.write('{"i": 3, "half')
    with pytest.warns(RuntimeWarning, match="incomplete last line"):
        df = results.load("t")
    assert df.i.tolist() == [0, 1, 2]


def test_corrupt_middle_line_names_file_and_line():
    results.append("t", {"i": 0}, env=False)
    with results.table_path("t").open("a") as fh:
        fh.write("garbage\n")
    results.append("t", {"i": 1}, env=False)
    with pytest.raises(results.ResultsCorruptError, match=r"t\.jsonl:2"):
        results.load("t")


WRITER = textwrap.dedent(
    """
    import sys
    from npas_lab import results
    i = 0
    while True:
        results.append("crash", {"i": i, "payload": "x" * 2000})
        i += 1
    """
)


def test_killed_writer_leaves_every_earlier_record_intact(isolated_home):
    env = {**os.environ, "NPAS_LAB_HOME": str(isolated_home)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER], env=env)
    path = isolated_home / "results" / "crash.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 200_000:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    df = results.load("crash")
    assert len(df) >= 20
    # Records are consecutive from 0: none lost or reordered before the kill.
    assert df.i.tolist() == list(range(len(df)))
    assert (df.payload.str.len() == 2000).all()
    # The file is still appendable after a crash.
    results.append("crash", {"i": len(df), "payload": "x" * 2000})
    assert results.load("crash").i.iloc[-1] == len(df)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(record=st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=6))
def test_any_json_record_reads_back_equal(record):
    written = results.append("prop", record, env=False)
    last = list(results.iter_records("prop"))[-1]
    assert last == json.loads(json.dumps(written))
    assert {k: last[k] for k in record if k != "time"} == {
        k: v for k, v in record.items() if k != "time"
    }
