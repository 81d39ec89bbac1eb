"""NPAS phase 2: search per-layer filter type, pruning scheme and rate, scored on the device.

Modules, in the order data flows:

- :mod:`~npas_lab.search.filters`: filter types (kernel-size changes initialised from the
  kernel's centre) and applying them to a model.
- :mod:`~npas_lab.search.space`: :class:`SearchSpace` (the options per layer, candidates, plans,
  the numeric encoding, the size) and :class:`SpaceConfig`.
- :mod:`~npas_lab.search.evaluate`: :class:`Evaluator`, fast evaluation (one-shot pruning, a
  fine-tune of a few steps, validation accuracy; TVM compile and measured latency), cached by
  plan key in the results store.
- :mod:`~npas_lab.search.reward`: :class:`RewardConfig`, the MnasNet soft form and a hard form.
- :mod:`~npas_lab.search.controller` / :mod:`~npas_lab.search.surrogate`: the Q-learning
  controller and the Gaussian-process meta-model.
- :mod:`~npas_lab.search.algorithms`: ``npas``, ``random``, ``rl``, ``bo``.
- :mod:`~npas_lab.search.phases`: the phases of an evaluation, timed in every record.
- :mod:`~npas_lab.search.executors`: where evaluations run (in process, a Dask cluster, any
  ``concurrent.futures.Executor``).
- :mod:`~npas_lab.search.loop`: :func:`search`, a resumable generator of :class:`Evaluation`.
- :mod:`~npas_lab.search.history`: reading runs back, best-so-far curves, Pareto fronts.
- :mod:`~npas_lab.search.zoo`: dense reference models (accuracy and latency) for the plots.
- :mod:`~npas_lab.search.cli`: the ``npas-lab search`` sub-command.

Examples
--------
>>> trained = train(TrainConfig())  # doctest: +SKIP
>>> space = SearchSpace.from_model(trained.model)  # doctest: +SKIP
>>> evaluator = Evaluator(trained.model, trained.data, model_name="small_cnn")  # doctest: +SKIP
>>> reward = RewardConfig(target_ms=0.1)  # doctest: +SKIP
>>> for ev in search(space, evaluator, reward, algorithm="npas", budget=20):  # doctest: +SKIP
...     print(ev.step, ev.accuracy, ev.latency, ev.reward)
"""

from npas_lab.search.algorithms import (
    ALGORITHMS,
    BayesianSearch,
    NPASSearch,
    RandomSearch,
    RLSearch,
    SearchAlgorithm,
    list_algorithms,
    make_algorithm,
)
from npas_lab.search.controller import ControllerConfig, QController
from npas_lab.search.evaluate import CACHE_TABLE, EvalConfig, EvalResult, Evaluator
from npas_lab.search.executors import InProcessExecutor, resolve_executor
from npas_lab.search.filters import apply_filter_types, filter_types_for, shrink_conv
from npas_lab.search.history import (
    RUNS_TABLE,
    Evaluation,
    best_so_far,
    load_history,
    pareto_front,
    phase_table,
    plan_table,
    run_records,
)
from npas_lab.search.loop import search
from npas_lab.search.phases import PHASES
from npas_lab.search.reward import REWARD_FORMS, RewardConfig
from npas_lab.search.space import DEFAULT_RATES, SearchSpace, SpaceConfig
from npas_lab.search.surrogate import Surrogate

__all__ = [
    "ALGORITHMS",
    "CACHE_TABLE",
    "DEFAULT_RATES",
    "PHASES",
    "REWARD_FORMS",
    "RUNS_TABLE",
    "BayesianSearch",
    "ControllerConfig",
    "EvalConfig",
    "EvalResult",
    "Evaluation",
    "Evaluator",
    "InProcessExecutor",
    "NPASSearch",
    "QController",
    "RLSearch",
    "RandomSearch",
    "RewardConfig",
    "SearchAlgorithm",
    "SearchSpace",
    "SpaceConfig",
    "Surrogate",
    "apply_filter_types",
    "best_so_far",
    "filter_types_for",
    "list_algorithms",
    "load_history",
    "make_algorithm",
    "pareto_front",
    "phase_table",
    "plan_table",
    "resolve_executor",
    "run_records",
    "search",
    "shrink_conv",
]
