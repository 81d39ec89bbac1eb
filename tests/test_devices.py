"""npas_lab.devices: profiles, the measurement protocol, engines, and TVM RPC on loopback."""

from __future__ import annotations

import dataclasses
import json
import pickle
import time

import psutil
import pytest
import torch
from torch import nn

from npas_lab import results
from npas_lab.compiler import CompiledModel, compile_model
from npas_lab.devices import (
    DeviceProfile,
    LocalRPC,
    MeasureConfig,
    Measurement,
    TrackerUnreachableError,
    available_cores,
    compare_engines,
    connect_tracker,
    get_device,
    get_engine,
    list_devices,
    list_engines,
    load_on_device,
    measure,
    time_loop,
)
from npas_lab.devices.rpc import _free_port
from npas_lab.models import create_model

SHAPE = (1, 3, 32, 32)
# Short but real protocol: tests check sanity, not speed.
QUICK = MeasureConfig(warmup=1, repeat=5, number=1, min_repeat_ms=5)


@pytest.fixture(scope="module")
def small() -> tuple[nn.Module, CompiledModel]:
    torch.manual_seed(0)
    model = create_model("small_cnn").eval()
    return model, compile_model(model, torch.randn(SHAPE), name="small_cnn")


# ------------------------------------------------------------------------------- profiles
def test_registry_has_host_devices_and_unknown_name_lists_them():
    assert {"host-cpu", "host-cpu-rpc"} <= set(list_devices())
    with pytest.raises(ValueError, match=r"Unknown device 'phone'; valid names: .*host-cpu"):
        get_device("phone")


def test_host_cpu_targets_this_machine():
    dev = get_device("host-cpu")
    assert dev.reach == "local" and dev.num_threads == available_cores()
    assert dev.target["kind"] == "llvm" and dev.target["mcpu"]
    assert dev.target["num-cores"] == available_cores()
    rpc = get_device("host-cpu-rpc")
    assert rpc.reach == "rpc" and rpc.key == "local" and rpc.target == dev.target


def test_profile_round_trips_through_json_and_is_read_only():
    dev = get_device("host-cpu-rpc")
    again = DeviceProfile.from_dict(json.loads(json.dumps(dev.to_dict())))
    assert again == dev and hash(again) == hash(dev)
    with pytest.raises(TypeError, match="read-only"):
        dev.target["mcpu"] = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        dev.name = "x"
    assert pickle.loads(pickle.dumps(dev)) == dev  # profiles travel to executor workers


def test_rpc_profile_without_tracker_is_rejected():
    with pytest.raises(ValueError, match="no tracker/key"):
        DeviceProfile(name="bad", target={"kind": "llvm"}, reach="rpc")


# ------------------------------------------------------------------------------- protocol
def test_time_loop_grows_number_to_reach_min_repeat_ms():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.001)

    times = time_loop(fn, number=1, repeat=3, min_repeat_ms=10)
    assert len(times) == 3 and all(t >= 0.001 for t in times)
    assert len(calls) >= 1 + 3 * 10  # the discarded call plus >= 10 ms of ~1 ms runs per repeat


def test_measurement_round_trips_and_summarises_median_and_iqr():
    m = Measurement.from_times(
        [0.004, 0.001, 0.002, 0.003, 0.1],
        device="host-cpu",
        engine="pytorch",
        target="t",
        config=QUICK,
        input_shape=SHAPE,
        model="m",
    )
    assert m.latency_ms == pytest.approx(3.0) and m.spread_ms == pytest.approx(2.0)
    assert m.repeats == 5 and m.times_ms[0] == pytest.approx(4.0)
    assert Measurement.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_measure_config_rejects_nonsense():
    with pytest.raises(ValueError, match="repeat must be >= 1"):
        MeasureConfig(repeat=0)


# -------------------------------------------------------------------------------- engines
def test_engine_registry_and_unknown_engine():
    assert list_engines() == ["mnn", "onnxruntime", "pytorch", "tvm"]
    expected = r"Unknown engine 'tensorrt'; valid names: mnn, onnxruntime"
    with pytest.raises(ValueError, match=expected):
        get_engine("tensorrt")


@pytest.mark.parametrize("engine", ["tvm", "pytorch", "onnxruntime"])
def test_measure_each_engine_on_small_cnn(small, engine):
    model, compiled = small
    runnable = compiled if engine == "tvm" else model
    m = measure(runnable, torch.randn(SHAPE), engine=engine, config=QUICK)
    assert m.engine == engine and m.device == "host-cpu" and m.model
    assert m.repeats == 5 and len(m.times_ms) == 5
    assert 0 < m.latency_ms < 10_000 and m.spread_ms >= 0
    assert min(m.times_ms) <= m.latency_ms <= max(m.times_ms)
    assert m.num_threads == available_cores() and m.input_shape == SHAPE
    if engine == "tvm":
        assert json.loads(m.target) == compiled.target
    assert Measurement.from_dict(json.loads(json.dumps(m.to_dict()))) == m


@pytest.mark.parametrize("engine", ["tvm", "onnxruntime"])
def test_engine_outputs_match_pytorch(small, engine):
    model, _ = small
    x = torch.randn(SHAPE)
    with torch.no_grad():
        expected = model(x)
    with get_engine(engine).prepare(model, x, device=get_device("host-cpu")) as runner:
        torch.testing.assert_close(runner(x), expected, atol=1e-4, rtol=0)


def test_measure_restores_training_mode_and_threads(small):
    model = create_model("small_cnn").train()
    threads = torch.get_num_threads()
    measure(model, torch.randn(SHAPE), engine="pytorch", config=QUICK)
    assert model.training and torch.get_num_threads() == threads


@pytest.mark.parametrize("engine", ["tvm", "pytorch", "onnxruntime"])
def test_measure_wrong_input_shape_names_it(small, engine):
    model, compiled = small
    runnable = compiled if engine == "tvm" else model
    runner = get_engine(engine).prepare(runnable, torch.randn(SHAPE), device=get_device("host-cpu"))
    with pytest.raises(ValueError, match=r"input shape \(1, 3, 32, 32\).*got shape \(1, 3, 8, 8\)"):
        measure(runner, torch.randn(1, 3, 8, 8), config=QUICK)
    runner.close()


def test_only_tvm_reaches_remote_devices(small):
    model, _ = small
    with pytest.raises(ValueError, match="only the 'tvm' engine runs on remote devices"):
        measure(model, torch.randn(SHAPE), engine="pytorch", device="host-cpu-rpc")


def test_compiled_model_refuses_a_device_with_another_target(small):
    _, compiled = small
    other = dataclasses.replace(
        get_device("host-cpu"), name="other", target={"kind": "llvm", "mcpu": "cortex-a76"}
    )
    with pytest.raises(ValueError, match=r"compiled for target .* device 'other' has target"):
        load_on_device(compiled, other)


def test_compare_engines_gives_one_row_per_engine_with_ratios(small):
    model, _ = small
    messages = []
    table = compare_engines(
        model,
        torch.randn(SHAPE),
        model_name="small_cnn",
        engines=["pytorch", "onnxruntime"],
        config=QUICK,
        progress=messages.append,
    )
    assert list(table["engine"]) == ["pytorch", "onnxruntime"]
    assert (table["model"] == "small_cnn").all() and (table["latency_ms"] > 0).all()
    assert table["vs_pytorch"].iloc[0] == pytest.approx(1.0)
    assert len(messages) == 4
    stored = results.load("measurements")
    assert stored["engine"].tolist() == ["pytorch", "onnxruntime"]
    assert stored["latency_ms"].tolist() == table["latency_ms"].tolist()
    assert stored["env"].iloc[0]["packages"]["onnxruntime"] == "1.32.0"


def test_compare_engines_fails_fast_on_bad_names(small):
    model, _ = small
    with pytest.raises(ValueError, match="Unknown engine 'tflite'"):
        compare_engines(model, torch.randn(SHAPE), engines=["pytorch", "tflite"])
    with pytest.raises(ValueError, match="only the 'tvm' engine runs on remote devices"):
        compare_engines(model, torch.randn(SHAPE), device="host-cpu-rpc")


# ------------------------------------------------------------------------------------ RPC
def test_unreachable_tracker_is_a_clear_error(small):
    port = _free_port("127.0.0.1")  # nothing listens there
    with pytest.raises(TrackerUnreachableError, match=f"no TVM RPC tracker at 127.0.0.1:{port}"):
        connect_tracker("127.0.0.1", port, timeout_s=0.3)
    _, compiled = small
    dead = get_device("host-cpu").with_tracker(f"127.0.0.1:{port}", key="local")
    with pytest.raises(TrackerUnreachableError):
        load_on_device(compiled, dead, tracker_timeout_s=0.3)


def _tree(pids: list[int]) -> list[psutil.Process]:
    procs = [psutil.Process(pid) for pid in pids]
    return procs + [c for p in procs for c in p.children(recursive=True)]


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE  # dead, waiting for a reaper
    except psutil.NoSuchProcess:
        return True


def test_rpc_on_loopback_measures_remotely_and_cleans_up(small, no_network):
    _, compiled = small
    x = torch.randn(SHAPE)
    local = compiled(x)
    with LocalRPC(key="local", timeout_s=90) as rpc:
        started = _tree(rpc.pids)
        assert len(rpc.pids) == 2 and len(started) >= 2
        device = rpc.device()
        assert device.name == "host-cpu-rpc" and device.tracker == rpc.tracker
        with load_on_device(compiled, device) as runner:
            assert runner.remote
            torch.testing.assert_close(runner(x), local, atol=1e-6, rtol=0)
        m = measure(compiled, x, device=device, config=QUICK)
        assert m.device == "host-cpu-rpc" and m.engine == "tvm" and m.latency_ms > 0
        assert json.loads(m.target) == compiled.target
    assert rpc.pids == []
    leftovers = [p for p in started if not _gone(p)]
    assert not leftovers, f"processes left running: {leftovers}"
