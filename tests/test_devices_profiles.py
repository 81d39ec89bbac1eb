"""Device profiles: the built-in phone/board/GPU profiles and user profiles from devices.toml."""

from __future__ import annotations

import json

import pytest
import tvm

from npas_lab.devices import (
    DeviceProfile,
    devices_file,
    get_device,
    list_devices,
    load_user_devices,
)

BUILT_IN = ["android-arm64", "android-opencl", "cuda", "host-cpu", "host-cpu-rpc", "linux-arm64"]


def test_every_built_in_profile_is_a_valid_tvm_target_and_round_trips():
    assert list_devices() == BUILT_IN  # no devices.toml in the test home
    for name in BUILT_IN:
        dev = get_device(name)
        host = dict(dev.host) if dev.host else None
        tvm.target.Target(dict(dev.target), host=host)  # TVM accepts it as is
        assert DeviceProfile.from_dict(json.loads(json.dumps(dev.to_dict()))) == dev
        assert dev.description
        if dev.reach == "rpc":
            assert dev.tracker == "127.0.0.1:9190" and dev.key


def test_phone_and_board_profiles_cross_compile_for_arm64():
    android = get_device("android-arm64")
    assert android.target["mtriple"] == "aarch64-linux-android"
    assert "+neon" in android.target["mattr"]
    assert android.target["num-cores"] == android.num_threads
    assert (android.reach, android.key) == ("rpc", "android")
    gpu = get_device("android-opencl")
    assert gpu.target["kind"] == "opencl" and gpu.target["device"] == "adreno"
    assert gpu.host["mtriple"] == "aarch64-linux-android" and gpu.key == "android"
    board = get_device("linux-arm64")
    assert board.target["mtriple"] == "aarch64-linux-gnu"
    assert board.cross_compiler == "aarch64-linux-gnu-gcc"
    assert get_device("cuda").target["kind"] == "cuda" and get_device("cuda").host is not None


def test_tracker_address_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("NPAS_LAB_TRACKER", "10.0.0.5:9000")
    assert get_device("android-arm64").tracker_address == ("10.0.0.5", 9000)


def test_bad_profiles_name_the_problem():
    with pytest.raises(ValueError, match=r"host .* has no 'kind'"):
        DeviceProfile(name="x", target={"kind": "opencl"}, host={"mtriple": "aarch64"})
    with pytest.raises(ValueError, match=r"unknown device profile field\(s\) \['trackr'\]"):
        DeviceProfile.from_dict({"name": "x", "target": {"kind": "llvm"}, "trackr": "a:1"})


def test_user_profiles_from_devices_toml(isolated_home):
    path = isolated_home / "devices.toml"
    assert devices_file() == path
    path.write_text(
        """
[devices.pixel7]
base = "android-arm64"
tracker = "192.168.1.20:9190"
key = "pixel7"
num_threads = 8
description = "Pixel 7"

[devices.rpi5]
target = { kind = "llvm", mtriple = "aarch64-linux-gnu", mcpu = "cortex-a76", num-cores = 4 }
num_threads = 4
tracker = "127.0.0.1:9190"
key = "rpi5"
cross_compiler = "aarch64-linux-gnu-gcc"
"""
    )
    assert {"pixel7", "rpi5"} <= set(list_devices())
    pixel = get_device("pixel7")
    assert pixel.key == "pixel7" and pixel.tracker == "192.168.1.20:9190"
    assert pixel.target["mtriple"] == "aarch64-linux-android"
    assert pixel.num_threads == 8 and pixel.target["num-cores"] == 8  # kept in step
    rpi = get_device("rpi5")
    assert rpi.reach == "rpc" and rpi.target["mcpu"] == "cortex-a76"
    tvm.target.Target(dict(rpi.target))


def test_devices_file_can_be_named_by_environment(tmp_path, monkeypatch):
    path = tmp_path / "elsewhere.toml"
    path.write_text('[devices.board]\nbase = "linux-arm64"\nkey = "b1"\n')
    monkeypatch.setenv("NPAS_LAB_DEVICES", str(path))
    assert devices_file() == path and get_device("board").key == "b1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[devices.host-cpu]\nbase = 'host-cpu'\n", "'host-cpu' is a built-in device"),
        ("[devices.p]\nbase = 'iphone'\n", "base = 'iphone' is not a registered device"),
        ("[devices.p]\nbase = 'android-arm64'\nthreads = 4\n", r"unknown .*\['threads'\]"),
        ("[devices.p]\ntarget = { mtriple = 'x' }\n", "has no 'kind'"),
        ("[devices.p]\ntarget = { kind = 'llvm' }\nreach = 'rpc'\n", "no tracker/key"),
        ("[pixel]\nkey = 'p'\n", r"unknown top-level key\(s\) \['pixel'\]"),
        ("[devices.p\n", "is not valid TOML"),
    ],
)
def test_malformed_devices_file_names_file_and_device(isolated_home, text, message):
    path = isolated_home / "devices.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_user_devices()
    assert str(path) in str(err.value)
