"""Where candidates are evaluated: in process, or on a cluster through an executor.

:func:`~npas_lab.search.loop.search` hands every evaluation that is not cached to a
:class:`concurrent.futures.Executor`: :class:`InProcessExecutor` by default (runs it at once, in
the caller's thread: what a notebook on one machine wants), a Dask cluster
(``dask.distributed.Client``, or its ``client.get_executor()``), Ray's or the standard library's
pools, or anything with ``submit(fn, *args) -> Future``.

What runs on a worker is :func:`evaluate`: the :class:`~.evaluate.Evaluator` (pickled without its
cache) evaluates the plan and appends its record to the results store of the ``home`` the
client gave (``NPAS_LAB_HOME`` on the worker), so workers need the same filesystem as the
client (a shared or network folder); the compiled library goes there too. The result comes back
to the search loop, which scores it and writes the run's record. Measurements run where the
device profile says: ``host-cpu`` times on the worker itself (so two workers on one machine
disturb each other's timings), a profile reached through a TVM RPC tracker times on the device
that the tracker hands out, one measurement per device at a time.

Examples
--------
>>> from dask.distributed import Client  # doctest: +SKIP
>>> client = Client("tcp://scheduler:8786")  # doctest: +SKIP
>>> for ev in search(space, evaluator, reward, executor=client, batch=8):  # doctest: +SKIP
...     print(ev.step, ev.accuracy, ev.latency)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from npas_lab import paths
from npas_lab.search.evaluate import EvalResult, Evaluator
from npas_lab.sparsity import PruningPlan

__all__ = [
    "InProcessExecutor",
    "SchedulerUnreachableError",
    "client_home",
    "evaluate",
    "resolve_executor",
]


class SchedulerUnreachableError(ConnectionError):
    """No Dask scheduler answered at the address given as the executor."""


class InProcessExecutor(Executor):
    """Run each submitted call at once in the caller's thread; return a finished future.

    The default executor of :func:`~npas_lab.search.loop.search`: evaluation order and timing
    are those of a plain loop. An exception is set on the future, not raised by ``submit``.

    Examples
    --------
    >>> InProcessExecutor().submit(pow, 2, 5).result()
    32
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Call ``fn(*args, **kwargs)`` now; return a future holding its result or exception."""
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # handed to the caller through the future, like any pool
            future.set_exception(err)
        return future


def resolve_executor(executor: Any = None, *, timeout_s: float = 10.0) -> Any:
    """Return something with ``submit`` for ``executor`` (None: an :class:`InProcessExecutor`).

    Parameters
    ----------
    executor
        None, a :class:`concurrent.futures.Executor`, a ``dask.distributed.Client`` (its
        ``get_executor()`` is used), the address of a Dask scheduler (``"tcp://host:8786"``,
        connected to with a new client), or any object with a ``submit(fn, *args)`` method that
        returns a future with ``result()``.
    timeout_s
        How long to wait for a scheduler given by address.

    Raises
    ------
    SchedulerUnreachableError
        If no scheduler answers at the address given.
    TypeError
        If ``executor`` has no ``submit`` method.
    """
    if executor is None:
        return InProcessExecutor()
    if isinstance(executor, str):
        executor = _connect(executor, timeout_s)
    get_executor = getattr(executor, "get_executor", None)
    if callable(get_executor) and type(executor).__module__.startswith("distributed"):
        return get_executor()  # a dask.distributed.Client: its concurrent.futures view
    if not callable(getattr(executor, "submit", None)):
        raise TypeError(
            f"executor={executor!r} has no submit(); pass None (in process), a "
            "concurrent.futures.Executor, or a dask.distributed.Client "
            "(e.g. Client('tcp://scheduler:8786'))"
        )
    return executor


def _connect(address: str, timeout_s: float) -> Any:
    """Return a ``dask.distributed.Client`` of the scheduler at ``address``."""
    from distributed import Client

    try:
        return Client(address, timeout=f"{timeout_s}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as err:
        cause = (str(err).splitlines() or [""])[0]
        raise SchedulerUnreachableError(
            f"executor={address!r}: no Dask scheduler answered within {timeout_s:g} s; start "
            f"one with `dask scheduler` and workers with `dask worker {address}`, or leave "
            f"executor=None to evaluate in process ({type(err).__name__}: {cause})"
        ) from err


def evaluate(evaluator: Evaluator, plan: PruningPlan, home: str | None = None) -> EvalResult:
    """Evaluate ``plan`` with ``evaluator`` and record it: the task a worker runs.

    Parameters
    ----------
    evaluator
        Carries the pretrained model, the data and the evaluation config.
    plan
        The candidate.
    home
        ``NPAS_LAB_HOME`` of the client; set on the worker so the record (and the compiled
        library) land in the client's results store. None: the worker's own.

    Returns
    -------
    EvalResult
        As :meth:`Evaluator.run` returns it (``cached=False``).
    """
    if home is not None and os.environ.get("NPAS_LAB_HOME") != home:
        # One client per worker process is the supported set-up; the results folder of a
        # worker then never changes mid-task.
        os.environ["NPAS_LAB_HOME"] = home
    return evaluator.run(plan)


def client_home() -> str:
    """Return the folder holding this process's ``results/`` (what :func:`evaluate` is told)."""
    return str(paths.home())
