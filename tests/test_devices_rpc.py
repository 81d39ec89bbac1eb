"""TVM RPC on loopback: dropped devices, several servers under one key, the device CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from npas_lab import results
from npas_lab.compiler import CompiledModel, compile_model
from npas_lab.devices import (
    DeviceUnavailableError,
    LocalRPC,
    MeasureConfig,
    Measurement,
    RetryPolicy,
    measure_many,
    measure_on_device,
    request_session,
    tracker_summary,
)
from npas_lab.devices.cli import main as device_main
from npas_lab.devices.rpc import _free_port
from npas_lab.models import create_model

SHAPE = (1, 3, 16, 16)
QUICK = MeasureConfig(warmup=1, repeat=3, number=1, min_repeat_ms=5)
# Long enough (~3 s of timing) that a server can be killed while it is being timed.
LONG = MeasureConfig(warmup=1, repeat=30, number=1, min_repeat_ms=100)
FAST_RETRY = RetryPolicy(retries=1, request_timeout_s=3.0, backoff_s=0.2)


@pytest.fixture(scope="module")
def compiled() -> CompiledModel:
    torch.manual_seed(0)
    return compile_model(create_model("small_cnn").eval(), torch.randn(SHAPE), name="small_cnn")


def _busy(rpc: LocalRPC, count: int) -> bool:
    queue = tracker_summary(rpc.tracker_host, rpc.tracker_port)["queue_info"].get(rpc.key, {})
    return rpc.num_servers - queue.get("free", rpc.num_servers) >= count


def _kill_when_busy(rpc: LocalRPC, pid_of: callable, delay_s: float = 0.5) -> threading.Thread:
    """SIGKILL a server's process group once it serves a session (a phone dropping off)."""

    def run() -> None:
        deadline = time.monotonic() + 60
        while not _busy(rpc, 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(delay_s)  # into the upload / timing
        os.killpg(pid_of(), signal.SIGKILL)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_device_dropping_mid_measurement_is_recorded_as_failed_and_caller_goes_on(
    compiled, no_network
):
    x = torch.randn(SHAPE)
    messages: list[str] = []
    with LocalRPC(key="drop", num_servers=1, timeout_s=90) as rpc:
        device = rpc.device()
        killer = _kill_when_busy(rpc, lambda: rpc.server_pids[0])
        m = measure_on_device(
            compiled, x, device=device, config=LONG, policy=FAST_RETRY, progress=messages.append
        )
        killer.join()
        assert not m.ok and m.status == "failed" and m.attempts == 2
        assert math.isnan(m.latency_ms) and m.repeats == 0
        assert "DeviceUnavailableError" in m.error  # the retry found no server under the key
        assert (m.device, m.key, m.num_threads) == ("host-cpu-rpc", "drop", device.num_threads)
        assert json.loads(m.target) == compiled.target
        assert sum("failed" in line for line in messages) == 2
    # The caller (a search) carries on: the next candidate is measured normally.
    ok = measure_on_device(compiled, x, device="host-cpu", config=QUICK)
    assert ok.ok and ok.latency_ms > 0
    stored = results.load("measurements")
    assert stored["status"].tolist() == ["failed", "ok"]
    assert stored["latency_ms"].isna().tolist() == [True, False]
    record = next(iter(results.iter_records("measurements")))  # NaN is stored as null
    again = Measurement.from_dict({f.name: record[f.name] for f in dataclasses.fields(Measurement)})
    assert again.status == "failed" and math.isnan(again.latency_ms)


def test_dropped_device_is_retried_on_another_server_under_the_key(compiled, no_network):
    x = torch.randn(SHAPE)
    with LocalRPC(key="pair", num_servers=2, timeout_s=90) as rpc:
        device = rpc.device()
        first: list[str] = []
        killed: list[int] = []

        def victim() -> int:
            # The server serving the session: the one whose port the progress line named.
            while not first:
                time.sleep(0.05)
            port = int(first[0].rsplit(":", 1)[1].split()[0])
            pid = next(p for p in rpc.server_pids if _listens(p, port))
            killed.append(pid)
            return pid

        def progress(line: str) -> None:
            if "session on" in line and not first:
                first.append(line)

        killer = _kill_when_busy(rpc, victim)
        m = measure_on_device(
            compiled, x, device=device, config=LONG, policy=FAST_RETRY, progress=progress
        )
        killer.join()
        assert killed, "no server was killed"
        assert m.ok and m.attempts == 2 and m.latency_ms > 0
        assert m.server and m.server not in first[0]  # the second server answered


def _listens(pid: int, port: int) -> bool:
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return any(c.laddr.port == port for p in procs for c in p.net_connections("tcp"))


def test_two_servers_under_one_key_measure_concurrently(compiled, no_network):
    x = torch.randn(SHAPE)
    events: list[tuple[float, str]] = []
    with LocalRPC(key="farm", num_servers=2, timeout_s=90) as rpc:
        device = rpc.device()
        config = MeasureConfig(warmup=1, repeat=5, number=1, min_repeat_ms=100)
        ms = measure_many(
            [compiled, compiled],
            x,
            device=device,
            config=config,
            progress=lambda line: events.append((time.monotonic(), line)),
        )
        # Both sessions were open at once: each started before the other finished.
        starts = [t for t, line in events if "session on" in line]
        ends = [t for t, line in events if " ms (IQR" in line]
        assert len(starts) == len(ends) == 2 and max(starts) < min(ends)
        # A key nobody serves: the request gives up at its deadline instead of queueing forever.
        with pytest.raises(DeviceUnavailableError, match="no RPC server with key 'nobody'"):
            request_session(rpc.tracker_host, rpc.tracker_port, "nobody", timeout_s=0.5)
    assert all(m.ok and m.key == "farm" and m.attempts == 1 for m in ms)
    assert len({m.server for m in ms}) == 2, "the tracker handed out two different servers"


# ------------------------------------------------------------------------------------ CLI
def _spawn_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "npas_lab.devices.cli", "device", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own group: the TVM tool and its helpers stop together
    )


def _list(tracker: str, capsys) -> tuple[int, str]:
    status = device_main(["device", "list", "--tracker", tracker, "--timeout", "0.5"])
    return status, capsys.readouterr().out


def test_device_cli_tracker_serve_list(no_network, capsys):
    port = _free_port("127.0.0.1")
    tracker = f"127.0.0.1:{port}"
    procs = [_spawn_cli("tracker", "--port", str(port))]
    try:
        deadline = time.monotonic() + 120  # two cold `import tvm` on a loaded machine
        while _list(tracker, capsys)[0] != 0:
            assert time.monotonic() < deadline, "tracker did not come up"
        serve_port = str(_free_port("127.0.0.1"))
        procs.append(
            _spawn_cli("serve", "--key", "cli", "--tracker", tracker, "--port", serve_port)
        )
        # A server just registered can be listed as not yet free for a moment (the tracker
        # counts it busy while it re-announces itself): wait for the settled state.
        while True:
            out = _list(tracker, capsys)[1]
            if ["cli", "1", "1"] in [line.split()[:3] for line in out.splitlines()]:
                break
            assert time.monotonic() < deadline, f"server did not register as free: {out}"
            time.sleep(0.5)
        lines = out.splitlines()
        assert lines[0] == f"tracker {tracker}"
        assert lines[1].split()[:4] == ["key", "servers", "free", "pending"]
        row = next(line for line in lines if line.startswith("cli "))
        assert row.split()[1:4] == ["1", "1", "0"]
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_device_cli_errors_are_one_line_with_status_2(capsys):
    port = _free_port("127.0.0.1")
    assert (
        device_main(["device", "list", "--tracker", f"127.0.0.1:{port}", "--timeout", "0.2"]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no TVM RPC tracker at 127.0.0.1:{port}" in err
    assert device_main(["device", "serve", "--key", "k", "--tracker", "nohost"]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err
    with __import__("socket").socket() as sock:  # a port in use
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        assert device_main(["device", "tracker", "--port", str(busy)]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
