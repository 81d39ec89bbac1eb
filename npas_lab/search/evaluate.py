"""Fast evaluation of a candidate: accuracy after a short fine-tune, latency measured compiled.

For a plan, :class:`Evaluator` does what NPAS's fast evaluation does (NPAS.md, phase 2):

1. apply the plan's filter types to a copy of the pretrained model
   (:func:`~npas_lab.search.filters.apply_filter_types`);
2. one-shot magnitude pruning to the plan (:func:`~npas_lab.sparsity.apply_plan`), then a
   fine-tune of ``finetune_steps`` optimizer steps with the masks on (a budget in steps, not
   epochs, so it does not grow with the dataset);
3. accuracy on the validation split (the test split stays unread by the search);
4. lower the plan and compile with TVM (:func:`~npas_lab.compiler.compile_model`, each pruned
   conv a compact kernel), measure on the device with the shared protocol
   (:func:`~npas_lab.devices.measure`).

Everything is cached by ``plan.key()`` within a *context* (the pretrained weights, the data, the
config): the results go to the ``search/evaluations`` table of the results store, the compiled
library to ``results/artifacts/`` (``save_artifacts``), so a plan is never evaluated twice,
across searches, algorithms, seeds and sessions.

Each record carries ``phases``: the wall time of every phase of the evaluation
(:mod:`~npas_lab.search.phases`), so a search shows where its time goes.
An :class:`Evaluator` pickles without its in-memory cache, so an executor can ship it to worker
processes (:func:`Evaluator.run` is what they call).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from npas_lab import results
from npas_lab.data import DataSplits
from npas_lab.devices import MeasureConfig, Measurement, get_device, measure
from npas_lab.search.filters import apply_filter_types
from npas_lab.search.phases import PHASES, PhaseTimer
from npas_lab.sparsity import PruningPlan, SparsityError, apply_plan
from npas_lab.training import evaluate, seed_everything

__all__ = ["CACHE_TABLE", "EvalConfig", "EvalResult", "Evaluator"]

#: Results-store table holding one record per evaluated (context, plan).
CACHE_TABLE = "search/evaluations"


def _default_measure() -> MeasureConfig:
    # Fewer, shorter repeats than the default protocol: a search measures hundreds of models.
    return MeasureConfig(warmup=2, repeat=7, min_repeat_ms=20.0)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How one candidate is evaluated (part of the cache context)."""

    finetune_steps: int = 40  # optimizer steps of the masked fine-tune after one-shot pruning
    lr: float = 1e-3  # AdamW learning rate, cosine-decayed to 0 over the fine-tune
    batch_size: int = 64
    weight_decay: float = 5e-4
    seed: int = 0  # seeds the fine-tune's shuffling
    device: str = "host-cpu"  # a registered device (npas-lab devices)
    kernel_tune: int = 0  # template configurations tuned per conv layer (0: default config)
    measure: MeasureConfig = field(default_factory=_default_measure)
    save_artifacts: bool = True  # keep each compiled library under results/artifacts/

    def __post_init__(self) -> None:
        for name in ("finetune_steps", "kernel_tune", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"EvalConfig.{name}={value!r} must be an int >= 0")
        if self.batch_size < 1 or not self.lr > 0:
            raise ValueError(
                f"EvalConfig: batch_size={self.batch_size!r} must be >= 1, lr={self.lr!r} > 0"
            )
        get_device(self.device)  # an unknown name fails here, listing the valid ones

    def to_dict(self) -> dict[str, Any]:
        """Return the config as JSON-able data."""
        data = asdict(self)
        data["measure"] = self.measure.to_dict()
        return data


@dataclass(frozen=True)
class EvalResult:
    """Accuracy and latency of one plan in one context (what the cache holds).

    Attributes
    ----------
    plan
        The candidate.
    accuracy
        Validation accuracy after the fine-tune (None if the evaluation failed).
    latency_ms, spread_ms
        Median and interquartile range of the measured latency (None if failed).
    cost_s
        Wall time the evaluation took when it ran (also for cached results).
    status
        ``"ok"`` or ``"failed"``.
    cached
        Whether this call read it from the cache.
    artifact
        Folder of the compiled library, if saved.
    error
        The error message of a failed evaluation.
    measurement
        The full :class:`~npas_lab.devices.Measurement` as a dict.
    phases
        Seconds per phase (:data:`~npas_lab.search.phases.PHASES`) when it ran; the phases
        after a failure are missing.
    """

    plan: PruningPlan
    accuracy: float | None
    latency_ms: float | None
    spread_ms: float | None
    cost_s: float
    status: str
    cached: bool = False
    artifact: str | None = None
    error: str | None = None
    measurement: dict[str, Any] | None = field(default=None, repr=False)
    phases: dict[str, float] | None = field(default=None, repr=False)


def weights_digest(model: nn.Module) -> str:
    """Return 16 hex digits of a hash of the model's state dict (names, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _finetune(model: nn.Module, data: DataSplits, config: EvalConfig) -> None:
    """Train ``model`` (masks on) for ``config.finetune_steps`` steps, cycling the loader."""
    if config.finetune_steps == 0:
        return
    generator = seed_everything(config.seed)
    loader = torch.utils.data.DataLoader(
        data.train, batch_size=config.batch_size, shuffle=True, generator=generator
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.finetune_steps)
    model.train()
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    for images, labels in itertools.islice(batches, config.finetune_steps):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()
        opt.step()
        sched.step()
    model.eval()


class Evaluator:
    """Evaluate plans on a pretrained model: accuracy and measured latency, cached.

    Parameters
    ----------
    model
        The pretrained model (not modified).
    data
        Splits: train for the fine-tune, val for the accuracy.
    config
        Fine-tune budget, device, measurement protocol.
    model_name
        Name for records and compiled artifacts; default the class name.

    Examples
    --------
    >>> trained = train(TrainConfig())  # doctest: +SKIP
    >>> evaluator = Evaluator(trained.model, trained.data, model_name="small_cnn")  # doctest: +SKIP
    >>> evaluator(space.plan(space.dense())).latency_ms  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataSplits,
        config: EvalConfig | None = None,
        *,
        model_name: str | None = None,
    ) -> None:
        self.model = copy.deepcopy(model).eval()
        self.data = data
        self.config = config or EvalConfig()
        self.model_name = model_name or type(model).__name__
        self.example_input = data.example_input()
        spec = {
            "model": self.model_name,
            "weights": weights_digest(self.model),
            "dataset": data.name,
            "input_shape": list(data.input_shape),
            "config": self.config.to_dict(),
        }
        self.context = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        self.spec = spec
        self._cache: dict[str, EvalResult] | None = None
        self.evaluated = 0  # evaluations run (not read from the cache) by this evaluator

    # ------------------------------------------------------------------ cache
    def _load_cache(self) -> dict[str, EvalResult]:
        if self._cache is None:
            self._cache = {}
            for record in results.iter_records(CACHE_TABLE):
                if record.get("context") == self.context:
                    self._cache[record["plan_key"]] = self._from_record(record)
        return self._cache

    @staticmethod
    def _from_record(record: dict[str, Any]) -> EvalResult:
        return EvalResult(
            plan=PruningPlan.from_json(record["plan"]),
            accuracy=record.get("accuracy"),
            latency_ms=record.get("latency_ms"),
            spread_ms=record.get("spread_ms"),
            cost_s=record.get("cost_s", 0.0),
            status=record.get("status", "ok"),
            cached=True,
            artifact=record.get("artifact"),
            error=record.get("error"),
            measurement=record.get("measurement"),
            phases=record.get("phases"),
        )

    def cached(self, plan: PruningPlan) -> EvalResult | None:
        """Return the cached result of ``plan`` in this context, or None."""
        return self._load_cache().get(plan.key())

    def remember(self, result: EvalResult) -> EvalResult:
        """Cache ``result``, evaluated by a copy of this evaluator (a worker); return it.

        The worker recorded it in the store already; this keeps the in-memory cache and
        :attr:`evaluated` in step without reading the store again. A result this evaluator
        knows (it ran it itself, in process) is returned as it is.
        """
        cache = self._load_cache()
        if result.plan.key() not in cache:
            cache[result.plan.key()] = dataclasses.replace(result, cached=True)
            self.evaluated += 1
        return result

    def __getstate__(self) -> dict[str, Any]:
        # Shipped to worker processes without the in-memory cache (the store is the cache).
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    # ------------------------------------------------------------------ evaluation
    def __call__(self, plan: PruningPlan) -> EvalResult:
        """Return the accuracy and latency of ``plan`` (from the cache when known).

        A plan that fails (a filter type or scheme that does not fit, a compile error) gives a
        ``"failed"`` result with the error, recorded like any other so it is not retried.
        """
        hit = self.cached(plan)
        if hit is not None:
            return hit
        return self.run(plan)

    def run(self, plan: PruningPlan) -> EvalResult:
        """Evaluate ``plan`` now (no cache look-up), append its record and return the result.

        This is what an executor's worker calls (:func:`~npas_lab.search.executors.evaluate`);
        the record goes to the results store the worker sees.
        """
        timer = PhaseTimer(plan.key())
        start = time.perf_counter()
        accuracy = latency = spread = artifact = error = measured = None
        status = "ok"
        try:
            with timer("load"):
                model, sparse_plan = apply_filter_types(self.model, plan)
            with timer("prune"):
                apply_plan(model, sparse_plan)
            with timer("finetune"):
                _finetune(model, self.data, self.config)
            with timer("accuracy"):
                accuracy = evaluate(model, self.data, split="val")["accuracy"]
            measurement, artifact = self._latency(model, plan, sparse_plan, timer)
            latency, spread = measurement.latency_ms, measurement.spread_ms
            measured = measurement.to_dict()
        except (SparsityError, ValueError, RuntimeError) as err:  # recorded, never retried
            status, error = "failed", f"{type(err).__name__}: {err}"
            error += "\n" + "".join(traceback.format_exception(err)[-3:])
        phases = {name: round(timer.seconds[name], 6) for name in PHASES if name in timer.seconds}
        result = EvalResult(
            plan=plan,
            accuracy=accuracy,
            latency_ms=latency,
            spread_ms=spread,
            cost_s=time.perf_counter() - start,
            status=status,
            artifact=artifact,
            error=error,
            measurement=measured,
            phases=phases,
        )
        results.append(
            CACHE_TABLE,
            {
                "context": self.context,
                "plan_key": plan.key(),
                "plan": plan.to_json(),
                "accuracy": accuracy,
                "latency_ms": latency,
                "spread_ms": spread,
                "cost_s": result.cost_s,
                "phases": phases,
                "status": status,
                "error": error,
                "artifact": artifact,
                "measurement": measured,
                "worker": f"{socket.gethostname()}:{os.getpid()}",
                "spec": self.spec,
            },
        )
        self._load_cache()[plan.key()] = dataclasses.replace(result, cached=True)
        self.evaluated += 1
        return result

    def _latency(
        self, model: nn.Module, plan: PruningPlan, sparse_plan: PruningPlan, timer: PhaseTimer
    ) -> tuple[Measurement, str | None]:
        # Deferred: compiler/ imports TVM, which a notebook only pays for when it measures.
        from npas_lab.compiler import compile_model, load_artifact, save_artifact

        name = f"{self.model_name}-{plan.key()}"
        with timer("compile"):
            compiled = compile_model(
                model,
                self.example_input,
                self.config.device,
                plan=sparse_plan,
                kernel_tune=self.config.kernel_tune,
                name=name,
                progress=False,
            )
        # Tuning runs inside compile_model: move its share (its own timings) out of "compile".
        tuned = compiled.timings.get("tune", 0.0)
        if self.config.kernel_tune:
            tuned += compiled.timings.get("kernels", 0.0)
        timer.seconds["compile"] -= tuned
        timer.seconds["tune"] = tuned
        artifact, runnable = None, compiled
        if self.config.save_artifacts:
            with timer("save"):
                key = f"search-{self.context}-{plan.key()}"
                artifact = str(save_artifact(compiled, plan=plan, key=key))
                if get_device(self.config.device).reach == "local":
                    # Measure the library just written, the artifact itself: the in-memory
                    # module would have LLVM generate the same code a second time (a JIT
                    # compile when its VM starts, ~as long as the whole save).
                    runnable = load_artifact(artifact)
        with timer("measure"):
            measurement = measure(
                runnable,
                self.example_input,
                device=self.config.device,
                config=self.config.measure,
                model_name=name,
            )
        return measurement, artifact
