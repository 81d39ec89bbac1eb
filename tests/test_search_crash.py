"""A search killed (SIGKILL) while it fine-tunes, compiles or measures resumes with nothing lost.

``npas-lab search`` runs in a subprocess that announces every phase of every evaluation in
``$NPAS_LAB_PHASE_LOG``; the test kills it as soon as the wanted phase has started and checks
afterwards that the phase had not ended (so the kill did land inside it). Each kill is followed
by a resume with the same ``--run-id``; the last one runs to the end. Compared with the same
search run uninterrupted in another store (from the same pretrained checkpoint): the same plans
in the same order with the same accuracies, the same Pareto front (on the same latencies),
every evaluation recorded once and none run twice. ``random`` proposes independently of the
measured latencies, which differ from one measurement to the next, so the candidates do not
depend on timing noise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from npas_lab import results
from npas_lab.search import CACHE_TABLE, load_history, pareto_front
from npas_lab.search.phases import PHASE_LOG_ENV

BUDGET = 4
ARGS = [
    "search",
    "--image-size",
    "8",
    "--epochs",
    "1",
    "--finetune-steps",
    "30",  # long enough to be caught in (the kill lands within milliseconds)
    "--rates",
    "1",
    "2",
    "4",
    "--algorithm",
    "random",
    "--budget",
    str(BUDGET),
    "--seed",
    "5",
    "--target-ms",
    "1.0",
    "--no-artifacts",
    "--run-id",
    "crash",
]
CLI = "import sys; from npas_lab.cli import main; sys.exit(main(sys.argv[1:]))"


def _events(log: Path) -> list[dict]:
    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def _start(home: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "NPAS_LAB_HOME": str(home), PHASE_LOG_ENV: str(log)}
    return subprocess.Popen(
        [sys.executable, "-c", CLI, *ARGS],
        env=env,
        stdin=subprocess.DEVNULL,  # never the terminal's (a stopped background job)
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(home: Path, log: Path) -> None:
    proc = _start(home, log)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def _kill_in(home: Path, log: Path, phase: str, *, evaluation: int) -> None:
    """Run the search; SIGKILL it once the ``evaluation``-th (1-based) evaluation it runs
    has started ``phase``; check the phase had not ended when it died."""
    proc = _start(home, log)
    deadline = time.monotonic() + 600
    while True:
        events = _events(log)
        keys = list(dict.fromkeys(e["plan_key"] for e in events))
        last = events[-1] if events else {}
        if len(keys) >= evaluation and last.get("phase") == phase and last["event"] == "start":
            proc.send_signal(signal.SIGKILL)
            break
        if proc.poll() is not None:
            pytest.fail(
                f"the search ended before the kill in {phase}: {proc.stderr.read()[-2000:]}"
            )
        assert time.monotonic() < deadline, "the search never reached the phase"
        time.sleep(0.005)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    last = _events(log)[-1]
    assert (last["phase"], last["event"]) == (phase, "start"), f"killed after {phase} ended"


def _completed(logs: list[Path]) -> list[str]:
    """Plan keys whose evaluation ran to its end (the measurement ended), over all processes."""
    return [
        e["plan_key"]
        for log in logs
        for e in _events(log)
        if (e["phase"], e["event"]) == ("measure", "end")
    ]


def _front(history):
    return pareto_front(history)[["plan_key", "accuracy"]].to_dict("records")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_search_killed_in_finetune_compile_and_measure_resumes_with_nothing_lost(
    tmp_path, monkeypatch
):
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    _run(reference, tmp_path / "reference.log")
    # The same pretrained weights (the evaluation context) in both stores.
    shutil.copytree(reference / "results" / "checkpoints", crashed / "results" / "checkpoints")

    logs = [tmp_path / f"crash{i}.log" for i in range(4)]
    _kill_in(crashed, logs[0], "finetune", evaluation=2)  # step 0 done, step 1 training
    _kill_in(crashed, logs[1], "compile", evaluation=2)  # step 1 done, step 2 compiling
    _kill_in(crashed, logs[2], "measure", evaluation=1)  # step 2 measuring
    _run(crashed, logs[3])

    # Each evaluation ran to its end exactly once, and is recorded exactly once.
    done = _completed(logs)
    assert len(done) == BUDGET and len(set(done)) == BUDGET
    monkeypatch.setenv("NPAS_LAB_HOME", str(crashed))
    store = results.load(CACHE_TABLE)
    assert sorted(store.plan_key) == sorted(done)
    history = load_history("crash")
    runs = results.load("search/runs")
    assert (runs.kind == "evaluation").sum() == BUDGET  # no step recorded twice
    assert history.status.tolist() == ["ok"] * BUDGET

    monkeypatch.setenv("NPAS_LAB_HOME", str(reference))
    expected = load_history("crash")
    assert history.plan_key.tolist() == expected.plan_key.tolist()
    assert history.accuracy.tolist() == expected.accuracy.tolist()
    assert history.latency_ms.notna().all()
    # The front of each run on its own measurements can differ: the same library measured twice
    # on a shared machine gave 0.14 ms and 6 ms. On the same latencies per plan (the
    # uninterrupted run's), the resumed run's front is the uninterrupted run's.
    latency = dict(zip(expected.plan_key, expected.latency_ms, strict=True))
    assert _front(history.assign(latency_ms=history.plan_key.map(latency))) == _front(expected)
