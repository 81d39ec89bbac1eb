"""User-defined device profiles, read from a small TOML file.

Where
-----
``$NPAS_LAB_DEVICES`` if set (a path), else ``devices.toml`` under ``$NPAS_LAB_HOME`` (the repo
root by default, see :mod:`npas_lab.paths`). No file: no user devices. The file is read on every
lookup, so an edit shows up without restarting a notebook kernel.

Format
------
One ``[devices.<name>]`` table per device. ``base`` copies every field of a registered profile
(``npas-lab devices`` lists them) and the other keys override it; without ``base`` the keys are
the :class:`~npas_lab.devices.profiles.DeviceProfile` fields (``target`` at least). Setting
``num_threads`` on a base whose target has ``num-cores`` updates it too, so generated code and
runtime agree. ``reach = "rpc"`` needs ``tracker`` and ``key`` (taken from the base if it has
them)::

    # devices.toml
    [devices.pixel7]
    base = "android-arm64"          # aarch64-linux-android, NEON, linked by the NDK
    tracker = "192.168.1.20:9190"   # the tracker the phone's TVM RPC app registers with
    key = "pixel7"                  # the key typed into the app
    num_threads = 4
    description = "Pixel 7 (Tensor G2), TVM RPC app"

    [devices.pixel7-gpu]
    base = "android-opencl"
    tracker = "192.168.1.20:9190"
    key = "pixel7"

    [devices.rpi5]
    target = { kind = "llvm", mtriple = "aarch64-linux-gnu", mcpu = "cortex-a76", num-cores = 4 }
    num_threads = 4
    reach = "rpc"
    tracker = "127.0.0.1:9190"
    key = "rpi5"
    cross_compiler = "aarch64-linux-gnu-gcc"

A name that is already registered, an unknown key or an invalid profile is an error naming the
file and the device.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from npas_lab import paths
from npas_lab.devices.profiles import DEVICES, DeviceProfile

__all__ = ["DEVICES_ENV", "devices_file", "load_user_devices"]

#: Environment variable naming the user devices file.
DEVICES_ENV = "NPAS_LAB_DEVICES"


def devices_file() -> Path:
    """Return where user device profiles are read from (the file need not exist)."""
    env = os.environ.get(DEVICES_ENV)
    return Path(env).expanduser() if env else paths.home() / "devices.toml"


def _profile(name: str, spec: dict[str, Any], where: str) -> DeviceProfile:
    spec = dict(spec)
    base_name = spec.pop("base", None)
    if base_name is not None:
        if base_name not in DEVICES:
            raise ValueError(
                f"{where}: base = {base_name!r} is not a registered device; "
                f"choose one of {', '.join(sorted(DEVICES))}"
            )
        data = DEVICES[base_name]().to_dict()
        if "num_threads" in spec and "target" not in spec and "num-cores" in data["target"]:
            data["target"] = {**data["target"], "num-cores": spec["num_threads"]}
    else:
        data = {}
    if "reach" not in spec and ("tracker" in spec or "key" in spec):
        spec["reach"] = "rpc"  # giving an address means "reach it there"
    data.update(spec)
    data["name"] = name
    try:
        return DeviceProfile.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def load_user_devices(path: str | Path | None = None) -> dict[str, DeviceProfile]:
    """Return the user-defined profiles by name (empty if there is no file).

    Parameters
    ----------
    path : str or Path, optional
        The TOML file; default :func:`devices_file`.

    Raises
    ------
    ValueError
        If the file is not valid TOML, a device is not a table, its name is already registered,
        or its fields do not make a valid profile. The message names the file and the device.
    """
    path = Path(path) if path is not None else devices_file()
    if not path.is_file():
        return {}
    try:
        document = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"device profiles file {path} is not valid TOML: {err}") from None
    extra = set(document) - {"devices"}
    if extra:
        raise ValueError(
            f"device profiles file {path}: unknown top-level key(s) {sorted(extra)}; "
            "write each device as a [devices.<name>] table"
        )
    out = {}
    for name, spec in document.get("devices", {}).items():
        where = f"device {name!r} in {path}"
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected a table [devices.{name}]")
        if name in DEVICES:
            raise ValueError(
                f"{where}: {name!r} is a built-in device; pick another name "
                f"(base = {name!r} starts from it)"
            )
        out[name] = _profile(name, spec, where)
    return out
