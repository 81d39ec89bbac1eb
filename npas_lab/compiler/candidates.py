"""How MetaSchedule candidates are built and timed on this machine, and how tuning reports.

:class:`InProcessBuilder` and :class:`InProcessRunner` replace MetaSchedule's ``LocalBuilder``
and ``LocalRunner`` process pools. Those workers ``import tvm`` (~10 s here) and the builder also
imports ``tvm.s_tir.tensor_intrin`` (~90 s on 2 loaded cores) for *every* batch (it restarts its
pool per batch, against a leak), so with the default 30 s timeout every build failed. In process,
candidates also run on exactly the thread pool deployed models use
(:func:`~npas_lab.compiler.set_runtime_threads` with the target's ``num-cores``), whereas a fresh
TVM worker sizes its pool to half the hardware threads.

:func:`only_needed_tensor_intrinsics` keeps ``TuneContext`` from registering every backend's
tensor intrinsics (see there), and :class:`Progress` reports measured trials.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import tempfile
import types
from collections.abc import Callable, Iterator

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, PyRunner
from tvm.s_tir.meta_schedule.runner.local_runner import (
    LocalRunnerFuture,
    default_alloc_argument,
    default_run_evaluator,
)

__all__ = ["InProcessBuilder", "InProcessRunner", "Progress", "only_needed_tensor_intrinsics"]

log = logging.getLogger("npas_lab.compiler.tuning")


def _intrinsic_modules(target: tvm.target.Target) -> tuple[str, ...] | None:
    """Return the ``tvm.s_tir.tensor_intrin`` submodules ``target``'s tuning rules can use.

    None means "all of them" (a target this function does not know).
    """
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return None
    triple = str(target.attrs.get("mtriple") or codegen.llvm_get_system_triple())
    if triple.startswith(("x86_64", "i686", "i386")):
        return ("x86",)  # AVX-512 / VNNI dot-product intrinsics
    if triple.startswith(("aarch64", "arm")):
        return ("arm_cpu",)
    if triple.startswith("riscv"):
        return ("riscv_cpu",)
    return None


@contextlib.contextmanager
def only_needed_tensor_intrinsics(target: tvm.target.Target) -> Iterator[None]:
    """Register only the tensor intrinsics of ``target``'s architecture while tuning.

    ``TuneContext`` imports ``tvm.s_tir.tensor_intrin`` for its side effect (registering the
    tensorization intrinsics of every backend). Its TVMScript parser walks ``inspect.stack()``,
    which is slow in a process that has imported torch: ~90 s here on 2 loaded cores, mostly for
    CUDA intrinsics a CPU target never uses. The package is replaced by a stand-in whose
    ``__path__`` is the real one, and only the target's submodule (e.g. ``x86``) is imported.
    """
    name = "tvm.s_tir.tensor_intrin"
    wanted = _intrinsic_modules(target)
    if name in sys.modules or wanted is None:
        yield
        return
    spec = importlib.util.find_spec(name)
    standin = types.ModuleType(name, "stand-in: only the target's tensor intrinsics (npas_lab)")
    standin.__path__ = list(spec.submodule_search_locations or [])
    sys.modules[name] = standin
    try:
        for sub in wanted:
            importlib.import_module(f"{name}.{sub}")
        yield
    finally:
        # The submodules stay imported (their intrinsics are registered, once per process); a
        # later real import of the package finds them in sys.modules and does not rerun them.
        if sys.modules.get(name) is standin:
            del sys.modules[name]


_BUILT: dict[str, tvm.runtime.Module] = {}  # artifact path -> module built in this process


@derived_object
class InProcessBuilder(PyBuilder):
    """Build candidates in this process (no worker start-up, no ``tensor_intrin`` import).

    The built module stays in memory under a fresh temporary folder's path (which MetaSchedule's
    ``RemoveBuildArtifact`` callback deletes after the run).
    """

    def build(self, build_inputs: list) -> list[BuilderResult]:
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        results = []
        for build_input in build_inputs:
            try:
                mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(build_input.mod)
                rt_mod = tvm.tirx.build(mod, target=build_input.target)
                path = os.path.join(tempfile.mkdtemp(prefix="npas-ms-"), "module")
                _BUILT[path] = rt_mod
                results.append(BuilderResult(path, None))
            except Exception as err:  # a bad candidate is a failed trial, not a crash
                results.append(BuilderResult(None, f"InProcessBuilder: {err}"))
        return results


@derived_object
class InProcessRunner(PyRunner):
    """Time candidates in this process, on the thread pool deployed models use."""

    def __init__(self, evaluator_config: EvaluatorConfig | None = None) -> None:
        super().__init__()
        self.evaluator_config = EvaluatorConfig._normalized(evaluator_config)

    def run(self, runner_inputs: list) -> list:
        futures = []
        for runner_input in runner_inputs:
            rt_mod = _BUILT.pop(str(runner_input.artifact_path), None)
            try:
                if rt_mod is None:
                    raise RuntimeError("module was not built by InProcessBuilder")
                device = tvm.runtime.device(str(runner_input.device_type), 0)
                args = default_alloc_argument(
                    device, [a.as_json() for a in runner_input.args_info], 1
                )
                costs = default_run_evaluator(rt_mod, device, self.evaluator_config, args)
                futures.append(LocalRunnerFuture(res=[float(c) for c in costs]))
            except Exception as err:
                futures.append(LocalRunnerFuture(error_message=f"InProcessRunner: {err}"))
        return futures


@derived_object
class Progress(PyMeasureCallback):
    """Report trials as they are measured (a tqdm bar, or log lines).

    ``on_task_done(task_id)`` is called once a task has measured ``per_task`` trials in this
    session, so the caller can record it before the session ends (or is killed).
    """

    def __init__(
        self,
        total: int,
        show: bool | Callable[[str], None],
        *,
        per_task: int | None = None,
        on_task_done: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self.done = 0
        self.per_task, self.on_task_done = per_task, on_task_done
        self.task_trials: dict[int, int] = {}
        self.best: dict[str, float] = {}
        self.total = total
        self.say = show if callable(show) else None
        self.bar = None
        if show is True:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="MetaSchedule", unit="trial", file=sys.stderr)

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        name = str(task_scheduler.tasks_[task_id].ctx.task_name)
        ok = [
            sum(float(s) for s in r.run_secs) / len(r.run_secs)
            for r in runner_results
            if r.error_msg is None and r.run_secs
        ]
        if ok:
            self.best[name] = min(self.best.get(name, float("inf")), min(ok) * 1e3)
        self.done += len(runner_results)
        failed = len(runner_results) - len(ok)
        message = (
            f"{name}: +{len(runner_results)} trials ({failed} failed), "
            f"best {self.best.get(name, float('nan')):.3f} ms"
        )
        log.info("trial %d/%d %s", self.done, self.total, message)
        if self.bar is not None:
            self.bar.set_postfix_str(message[:60])
            self.bar.update(len(runner_results))
        if self.say is not None:
            self.say(f"[tune {self.done}/{self.total}] {message}")
        before = self.task_trials.get(task_id, 0)
        after = self.task_trials[task_id] = before + len(runner_results)
        if self.on_task_done and self.per_task and before < self.per_task <= after:
            self.on_task_done(int(task_id))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
