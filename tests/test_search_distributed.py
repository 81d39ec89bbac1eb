"""The search on a Dask cluster (worker processes on loopback) records what it records in process.

small_cnn on digits at 8 px, pretrained one epoch; every evaluation really prunes, fine-tunes
(2 steps), compiles with TVM and measures. ``random`` proposes independently of the measured
latencies, so the plans, their order and their (deterministic) accuracies must be identical;
latencies are measured again and only checked to be there.
"""

from __future__ import annotations

import os
from concurrent.futures import Future

import pytest
import torch
from distributed import Client, LocalCluster

from npas_lab import results
from npas_lab.data import load_dataset
from npas_lab.devices import MeasureConfig
from npas_lab.models import create_model
from npas_lab.search import (
    CACHE_TABLE,
    PHASES,
    EvalConfig,
    Evaluator,
    InProcessExecutor,
    RewardConfig,
    SearchSpace,
    SpaceConfig,
    load_history,
    resolve_executor,
    search,
)
from npas_lab.training import fit

FAST = EvalConfig(finetune_steps=2, measure=MeasureConfig(warmup=1, repeat=2, min_repeat_ms=1.0))
RUN = {"algorithm": "random", "budget": 4, "seed": 3, "batch": 2, "run_id": "d"}


@pytest.fixture(scope="module")
def pretrained():
    data = load_dataset("digits", image_size=8, in_channels=1)
    model = create_model("small_cnn", in_channels=1, input_size=8)
    fit(model, data, epochs=1, lr=3e-3, progress=False)
    return model, data


def _rows(evaluations):
    return [(e.step, e.plan.key(), e.candidate, e.accuracy, e.status) for e in evaluations]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_search_on_a_local_dask_cluster_records_what_it_records_in_process(
    pretrained, isolated_home, tmp_path, monkeypatch
):
    model, data = pretrained
    space = SearchSpace.from_model(model, SpaceConfig(rates=(1, 2, 4), blocks=((8, 4),)))
    reward = RewardConfig(target_ms=1.0)

    # In process, in another store, with torch on one thread as on the workers (Dask starts
    # them with OMP_NUM_THREADS=1): the fine-tune's float sums then add up in the same order.
    monkeypatch.setenv("NPAS_LAB_HOME", str(tmp_path / "in-process"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = list(search(space, Evaluator(model, data, FAST), reward, **RUN))
    finally:
        torch.set_num_threads(threads)
    local_store = results.load(CACHE_TABLE)

    monkeypatch.setenv("NPAS_LAB_HOME", str(isolated_home))
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit="2GiB",
        ) as cluster,
        Client(cluster) as client,
    ):
        evaluator = Evaluator(model, data, FAST)
        remote = list(search(space, evaluator, reward, executor=client, **RUN))
        worker_pids = set(client.run(os.getpid).values())

    assert _rows(remote) == _rows(local)
    assert [e.status for e in remote] == ["ok"] * 4
    assert all(e.latency > 0 and e.reward is not None for e in remote)
    assert all(set(e.phases) == set(PHASES) for e in remote)
    assert evaluator.evaluated == 4  # the client's cache learnt what the workers did

    # The workers wrote the evaluation records (and compiled libraries) to the client's store.
    store = results.load(CACHE_TABLE)
    assert sorted(store.plan_key) == sorted(local_store.plan_key)
    pids = {int(worker.rsplit(":", 1)[1]) for worker in store.worker}
    assert pids <= worker_pids and os.getpid() not in pids
    assert len(list((isolated_home / "results" / "artifacts").glob("search-*"))) == 4
    history = load_history("d")
    assert history.step.tolist() == [0, 1, 2, 3]
    assert history.accuracy.tolist() == [e.accuracy for e in local]


def test_the_default_executor_runs_in_process_and_others_are_checked():
    future = InProcessExecutor().submit(divmod, 7, 2)
    assert isinstance(future, Future) and future.result() == (3, 1)
    failed = InProcessExecutor().submit(divmod, 1, 0)
    assert isinstance(failed.exception(), ZeroDivisionError)
    assert isinstance(resolve_executor(None), InProcessExecutor)
    with pytest.raises(TypeError, match=r"executor=42 has no submit\(\).*dask.distributed.Client"):
        resolve_executor(42)
