"""Dense reference models for search plots: accuracy and measured latency of registry models.

The live Pareto figure of a search shows where the pruned candidates stand against dense models
of the zoo (NPAS Fig. 7 compares against dense MobileNet-V3 and EfficientNet-B0). Each entry is
trained (or loaded from the checkpoint cache) on the same data, compiled with TVM for the
device and measured with the same protocol; results are cached in the ``search/zoo`` table by
(train config, device, protocol), so a notebook re-run measures nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from npas_lab import results
from npas_lab.devices import MeasureConfig, measure
from npas_lab.training import TrainConfig, evaluate, train

__all__ = ["ZOO_TABLE", "dense_zoo"]

#: Results-store table of dense reference points.
ZOO_TABLE = "search/zoo"


def dense_zoo(
    models: Sequence[str],
    base: TrainConfig,
    *,
    device: str = "host-cpu",
    measure_config: MeasureConfig | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Return ``model``, ``accuracy`` (validation), ``latency_ms`` of dense registry models.

    Parameters
    ----------
    models
        Registry names; each is trained like ``base`` with only the model changed.
    base
        Dataset, image size, channels, epochs, seed.
    device
        Where latency is measured (TVM, the project's kernels).
    measure_config
        The protocol; default ``MeasureConfig(repeat=7, min_repeat_ms=20)``.
    progress
        Show training progress bars.
    """
    from npas_lab.compiler import compile_model  # deferred: TVM only when measuring

    measure_config = measure_config or MeasureConfig(repeat=7, min_repeat_ms=20.0)
    known = {
        (r["config_key"], r["device"], str(r["measure"])): r
        for r in results.iter_records(ZOO_TABLE)
    }
    rows = []
    for name in models:
        config = TrainConfig(**{**base.to_dict(), "model": name})
        key = (config.key(), device, str(measure_config.to_dict()))
        if key not in known:
            trained = train(config, progress=progress)
            x = trained.data.example_input()
            compiled = compile_model(trained.model, x, device, name=name, progress=False)
            m = measure(compiled, x, device=device, config=measure_config, model_name=name)
            known[key] = results.append(
                ZOO_TABLE,
                {
                    "model": name,
                    "config_key": config.key(),
                    "config": config.to_dict(),
                    "device": device,
                    "measure": measure_config.to_dict(),
                    "accuracy": evaluate(trained.model, trained.data, split="val")["accuracy"],
                    "latency_ms": m.latency_ms,
                    "spread_ms": m.spread_ms,
                },
            )
        record = known[key]
        rows.append({k: record[k] for k in ("model", "accuracy", "latency_ms", "spread_ms")})
    return pd.DataFrame(rows, columns=["model", "accuracy", "latency_ms", "spread_ms"])
