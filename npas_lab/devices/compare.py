"""Compare engines on one model: the same input, device, threads and protocol for each.

Examples
--------
>>> x = torch.randn(1, 3, 32, 32)
>>> table = compare_engines(model, x, model_name="small_cnn")  # doctest: +SKIP
>>> table[["engine", "latency_ms", "spread_ms", "vs_pytorch"]]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import nn

from npas_lab import results
from npas_lab.devices.engines import get_engine
from npas_lab.devices.measure import MeasureConfig, Measurement, measure
from npas_lab.devices.profiles import DeviceProfile, get_device

__all__ = ["COMPARE_COLUMNS", "compare_engines"]

#: Leading columns of :func:`compare_engines` (the rest are ``Measurement.to_dict()`` fields).
COMPARE_COLUMNS = (
    "model",
    "engine",
    "device",
    "latency_ms",
    "spread_ms",
    "vs_pytorch",
    "prepare_s",
)


def compare_engines(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    model_name: str | None = None,
    engines: Sequence[str] = ("tvm", "pytorch", "onnxruntime"),
    device: str | DeviceProfile = "host-cpu",
    config: MeasureConfig | None = None,
    progress: Callable[[str], None] | None = None,
    record: bool = True,
    on_error: str = "row",
) -> pd.DataFrame:
    """Prepare and measure ``model`` with each engine; return one row per engine.

    Parameters
    ----------
    model : nn.Module
        Measured in eval mode (its mode is restored).
    example_input : torch.Tensor
        The input of every timed run.
    model_name : str, optional
        Recorded in the rows; default the class name.
    engines : sequence of str
        Registered engine names (see :func:`~npas_lab.devices.list_engines`).
    device : str or DeviceProfile
        PyTorch and ONNX Runtime run only on local devices.
    config : MeasureConfig, optional
        The protocol, the same for all engines.
    progress : callable, optional
        Called with a one-line message before and after each engine (e.g. ``print``).
    record : bool
        Append each row to the ``measurements`` table of the results store as it is measured,
        so a crash in a later engine keeps the earlier figures.
    on_error : {"row", "raise"}
        What an engine that cannot run the model (export, conversion, compilation or a run
        fails) gives: ``"row"``, a row with ``status="failed"``, NaN latency and the reason in
        ``error`` (the other engines are still measured); ``"raise"``, the exception.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COMPARE_COLUMNS` then the other ``Measurement`` fields; ``vs_pytorch`` is
        latency / PyTorch latency (NaN without a PyTorch row), ``prepare_s`` the seconds spent
        compiling or exporting; ``status`` and ``error`` say whether and why an engine failed.

    Raises
    ------
    ValueError
        For an unknown engine or device (before anything is compiled), or a local-only engine on
        a remote device.
    """
    if on_error not in ("row", "raise"):
        raise ValueError(f"on_error={on_error!r} is not one of 'row', 'raise'")
    profile = get_device(device)
    chosen = [get_engine(name) for name in engines]  # fail fast on a typo
    for engine in chosen:
        if engine.name != "tvm" and profile.reach != "local":
            raise ValueError(
                f"engine {engine.name!r} runs only in process; device {profile.name!r} is "
                f"reached by {profile.reach} (only the 'tvm' engine runs on remote devices)"
            )
    model_name = model_name or type(model).__name__
    say = progress or (lambda message: None)
    shape = "x".join(str(d) for d in example_input.shape)
    rows = []
    for engine in chosen:
        say(f"[{model_name} {shape}] {engine.name}: preparing on {profile.name} ...")
        start = time.perf_counter()
        prepare_s = float("nan")
        try:
            with engine.prepare(model, example_input, device=profile) as runner:
                prepare_s = time.perf_counter() - start
                m = measure(runner, example_input, config=config, model_name=model_name)
        except Exception as err:
            if on_error == "raise":
                raise
            reason = f"{type(err).__name__}: {err}".strip()
            m = Measurement.failed(
                reason,
                device=profile.name,
                engine=engine.name,
                target="",
                config=config or MeasureConfig(),
                num_threads=profile.num_threads,
                input_shape=tuple(example_input.shape),
                model=model_name,
            )
            say(f"[{model_name} {shape}] {engine.name}: cannot run this model: {reason}")
        else:
            say(
                f"[{model_name} {shape}] {engine.name}: {m.latency_ms:.3f} ms "
                f"(IQR {m.spread_ms:.3f}, prepared in {prepare_s:.1f} s)"
            )
        row = {**m.to_dict(), "prepare_s": prepare_s}
        if record:
            results.append("measurements", {"kind": "compare_engines", **row})
        rows.append(row)
    table = pd.DataFrame(rows)
    reference = table.loc[table["engine"] == "pytorch", "latency_ms"]
    table["vs_pytorch"] = (
        table["latency_ms"] / reference.iloc[0] if len(reference) else float("nan")
    )
    return table[list(COMPARE_COLUMNS) + [c for c in table.columns if c not in COMPARE_COLUMNS]]
