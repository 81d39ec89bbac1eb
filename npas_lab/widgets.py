"""ipywidgets dashboards that drive the package and redraw figures live.

:class:`RuleCheckboxes`
    One checkbox per registered operator rule (phase 1), ticked for the rules applied.
:class:`ReplacementDashboard`
    Those checkboxes, a button that runs :func:`npas_lab.operators.measure_replacement` on the
    ticked rules, and the deltas figure and table of the last run.

:class:`PruningDashboard`
    Model, scheme, rate and epoch controls; a button that pretrains (cached), runs
    :func:`npas_lab.pruning.select_algorithm` with the accuracy curves drawn live, then compiles
    and measures the chosen result.
:class:`BlockSizeDashboard`
    Model, rate and block-list controls; a button that runs
    :func:`npas_lab.studies.block_size_study`, adding each block size's point to the figure as
    soon as it is measured.

Notebooks run headless (papermill) with the rules of their ``parameters`` cell; the widgets show
what was applied and let a reader re-run with other rules.

Examples
--------
>>> deltas = measure_replacement(model, data, rules=RULES)  # doctest: +SKIP
>>> ReplacementDashboard(model, data, rules=RULES, initial=deltas)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import ipywidgets as widgets
import pandas as pd
from IPython.display import display
from torch import nn

from npas_lab.data import DataSplits
from npas_lab.operators import DEFAULT_RULES, get_rule, list_rules, measure_replacement
from npas_lab.plotting import operator_deltas_figure

__all__ = ["BlockSizeDashboard", "PruningDashboard", "ReplacementDashboard", "RuleCheckboxes"]


class RuleCheckboxes(widgets.VBox):
    """One ``Checkbox`` per registered operator rule, in a ``VBox``.

    Parameters
    ----------
    found : pandas.DataFrame, optional
        :func:`~npas_lab.operators.find_unfriendly` of the model: each checkbox then says how
        many calls its rule would replace, and rules with nothing to replace are disabled.
    selected : iterable of str
        Rules ticked at first (default the NPAS ones).

    Examples
    --------
    >>> boxes = RuleCheckboxes(find_unfriendly(model, (1, 3, 32, 32)), selected=["swish"])
    >>> boxes.selected  # doctest: +SKIP
    ('swish',)
    """

    def __init__(
        self, found: pd.DataFrame | None = None, *, selected: Iterable[str] = DEFAULT_RULES
    ) -> None:
        chosen = {selected} if isinstance(selected, str) else set(selected)
        for name in chosen:
            get_rule(name)  # an unknown name fails here, listing the valid ones
        self.checkboxes: dict[str, widgets.Checkbox] = {}
        for name in list_rules():
            rule = get_rule(name)
            label = f"{name}: {', '.join(rule.kinds)} -> {rule.produces}"
            calls = None
            if found is not None:
                calls = int(found.loc[found["kind"].isin(rule.kinds), "count"].sum())
                label += f" ({calls} calls)"
            self.checkboxes[name] = widgets.Checkbox(
                value=name in chosen,
                description=label,
                disabled=calls == 0 and name not in chosen,
                indent=False,
                layout=widgets.Layout(width="auto"),
            )
        super().__init__(children=list(self.checkboxes.values()))

    @property
    def selected(self) -> tuple[str, ...]:
        """The ticked rule names, in registry order."""
        return tuple(name for name, box in self.checkboxes.items() if box.value)


class ReplacementDashboard(widgets.VBox):
    """Rule checkboxes, a "Measure" button and the deltas figure of the last measurement.

    The button calls :func:`~npas_lab.operators.measure_replacement` with the ticked rules and
    the fixed ``measure_options``, then shows :func:`~npas_lab.plotting.operator_deltas_figure`
    and the table (every run is also in the ``operators`` table of the results store).

    Parameters
    ----------
    model : nn.Module
        The trained model (never modified).
    data : DataSplits
        Its data.
    rules : iterable of str
        Rules ticked at first: those applied to ``initial``.
    initial : pandas.DataFrame, optional
        Rows of a measurement already made with ``rules`` (kept in :attr:`deltas`; its figure is
        the notebook's to show), until the button is pressed.
    found : pandas.DataFrame, optional
        :func:`~npas_lab.operators.find_unfriendly` of ``model`` (call counts on the checkboxes).
    **measure_options
        Keyword options of :func:`~npas_lab.operators.measure_replacement` (``device``,
        ``finetune_epochs``, ``measure_config``, ...), used for every run.
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataSplits,
        *,
        rules: Iterable[str] = DEFAULT_RULES,
        initial: pd.DataFrame | None = None,
        found: pd.DataFrame | None = None,
        **measure_options: Any,
    ) -> None:
        self.model = model
        self.data = data
        self.measure_options = measure_options
        self.rules = RuleCheckboxes(found, selected=rules)
        self.button = widgets.Button(description="Measure", icon="play", button_style="primary")
        self.status = widgets.Label()
        self.output = widgets.Output()
        self.deltas: pd.DataFrame | None = None
        self.button.on_click(lambda _: self.run())
        for box in self.rules.checkboxes.values():
            box.observe(self._changed, names="value")
        super().__init__(
            children=[self.rules, widgets.HBox([self.button, self.status]), self.output]
        )
        if initial is not None:
            # Not drawn into self.output here: capturing into an Output widget while a notebook
            # runs headless can hang papermill/nbclient (jupyter/nbclient#312,
            # nteract/papermill#723); the notebook shows that figure in a cell of its own.
            self.deltas = initial
            self.status.value = f"measured above: {self._variants(initial)}"

    def _changed(self, _change: dict[str, Any]) -> None:
        self.status.value = f"rules {list(self.rules.selected)}: press Measure to measure them"

    @staticmethod
    def _variants(deltas: pd.DataFrame) -> str:
        return ", ".join(v for v in deltas["variant"] if v != "original") or "the original only"

    def show(self, deltas: pd.DataFrame) -> None:
        """Show ``deltas`` (rows of :func:`measure_replacement`): figure, then table."""
        self.deltas = deltas
        self.status.value = f"showing {self._variants(deltas)}"
        self.output.clear_output(wait=True)
        with self.output:
            display(operator_deltas_figure(deltas))
            display(deltas.drop(columns=["measurement", "finetune"], errors="ignore"))

    def run(self) -> pd.DataFrame:
        """Measure the ticked rules (minutes: a TVM compile and a fine-tune per variant)."""
        self.button.disabled = True
        self.status.value = f"measuring {list(self.rules.selected)} ..."
        try:
            with self.output:
                deltas = measure_replacement(
                    self.model, self.data, rules=self.rules.selected, **self.measure_options
                )
        except Exception as err:
            self.status.value = f"failed: {type(err).__name__}: {err}"
            raise
        finally:
            self.button.disabled = False
        self.show(deltas)
        return deltas


def parse_blocks(text: str) -> list[tuple[int, int]]:
    """Parse ``"1x1, 8x4, whole"`` into block sizes (``whole`` = one block per layer).

    Raises
    ------
    ValueError
        Naming the entry that is not ``<filters>x<channels>`` or ``whole``.
    """
    from npas_lab.studies import WHOLE_LAYER

    blocks = []
    for entry in (e.strip().lower() for e in text.split(",")):
        if not entry:
            continue
        if entry in ("whole", "whole layer"):
            blocks.append(WHOLE_LAYER)
            continue
        parts = entry.split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"block {entry!r}: write <filters>x<channels> (e.g. 8x4) or 'whole'")
        blocks.append((int(parts[0]), int(parts[1])))
    if not blocks:
        raise ValueError("no block sizes given: e.g. '1x1, 8x4, whole'")
    return blocks


class _RunDashboard(widgets.VBox):
    """Controls, a Run button with a status line, and a live figure below them."""

    def __init__(self, controls: list[widgets.Widget], figure: Any, label: str) -> None:
        self.button = widgets.Button(description=label, icon="play", button_style="primary")
        self.status = widgets.Label()
        self.figure = figure
        self.button.on_click(lambda _: self._safe_run())
        super().__init__(
            children=[
                widgets.HBox(controls[:3]),
                widgets.HBox([*controls[3:], self.button, self.status]),
                figure,
            ]
        )

    def _safe_run(self) -> None:
        self.button.disabled = True
        try:
            self.run()
        except Exception as err:  # shown to the user in the status line, not lost in a log
            self.status.value = f"failed: {type(err).__name__}: {err}"
        finally:
            self.button.disabled = False

    def run(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError


class PruningDashboard(_RunDashboard):
    """Pick model, scheme, rate and epochs; run the four pruning algorithms with live curves.

    Parameters
    ----------
    model, scheme, rate, trial_epochs, final_epochs
        Initial values of the controls.
    train_options
        :class:`~npas_lab.training.TrainConfig` fields for pretraining (``dataset``,
        ``image_size``, ``in_channels``, ``epochs``); the checkpoint cache makes a second run of
        the same model instant.
    candidates
        Algorithms tried (default: all four).
    device
        Where the chosen result is compiled and measured.
    """

    def __init__(
        self,
        *,
        model: str = "resnet18",
        scheme: str = "block_punched",
        rate: float = 6.0,
        trial_epochs: int = 1,
        final_epochs: int = 4,
        train_options: dict[str, Any] | None = None,
        candidates: Iterable[str] = ("oneshot", "gradual", "admm", "group_lasso"),
        device: str = "host-cpu",
    ) -> None:
        from npas_lab.models import list_models
        from npas_lab.plotting import algorithm_curves_figure
        from npas_lab.sparsity import list_schemes

        self.train_options = dict(train_options or {})
        self.candidates = list(candidates)
        self.device = device
        self.model = widgets.Dropdown(options=list_models(), value=model, description="model")
        schemes = [s for s in list_schemes() if s != "dense"]
        self.scheme = widgets.Dropdown(options=schemes, value=scheme, description="scheme")
        self.rate = widgets.FloatSlider(value=rate, min=1.5, max=10.0, step=0.5, description="rate")
        self.trial_epochs = widgets.IntSlider(trial_epochs, min=1, max=10, description="trial")
        self.final_epochs = widgets.IntSlider(final_epochs, min=1, max=30, description="final")
        self.selection = None
        figure = algorithm_curves_figure(widget=True)
        controls = [self.model, self.scheme, self.rate, self.trial_epochs, self.final_epochs]
        super().__init__(controls, figure, "Prune")

    def run(self) -> Any:
        """Pretrain (cached), select the algorithm with live curves, measure the result."""
        from npas_lab.compiler import compile_model
        from npas_lab.devices import get_device, get_engine, measure
        from npas_lab.plotting import curve_updater
        from npas_lab.pruning import select_algorithm
        from npas_lab.sparsity import uniform_plan
        from npas_lab.training import TrainConfig, train

        self.status.value = f"pretraining {self.model.value} (cached after the first run) ..."
        trained = train(TrainConfig(model=self.model.value, **self.train_options))
        plan = uniform_plan(trained.model, self.scheme.value, self.rate.value)
        with self.figure.batch_update():
            self.figure.data = ()
            self.figure.layout.shapes = ()
        self.figure.add_hline(y=trained.test_accuracy, line=dict(dash="dash"))

        draw = curve_updater(self.figure)

        def on_epoch(row: dict[str, Any]) -> None:
            draw(row)
            self.status.value = (
                f"{row['algorithm']} {row['stage']}: epoch {row['epoch']} "
                f"val {row['val_accuracy']:.3f}"
            )

        self.selection = select_algorithm(
            trained.model,
            plan,
            trained.data,
            candidates=self.candidates,
            trial_epochs=self.trial_epochs.value,
            final_epochs=self.final_epochs.value,
            on_epoch=on_epoch,
            progress=False,
        )
        result = self.selection.result
        x = trained.data.example_input()
        compiled = compile_model(result.model, x, self.device, plan=plan, progress=False)
        with get_engine("tvm").prepare(compiled, x, device=get_device(self.device)) as runner:
            latency = measure(runner, x).latency_ms
        self.status.value = (
            f"chose {self.selection.algorithm}: test accuracy {result.test_accuracy:.4f} "
            f"(dense {trained.test_accuracy:.4f}), {latency:.3f} ms on {self.device}"
        )
        return self.selection


class BlockSizeDashboard(_RunDashboard):
    """Pick model, rate and block sizes; run the block-size study, one point at a time.

    Parameters
    ----------
    model, rate, blocks
        Initial values of the controls (``blocks`` as text, e.g. ``"1x1, 8x4, whole"``).
    train_options
        :class:`~npas_lab.training.TrainConfig` fields for pretraining (cached).
    **study_options
        Options of :func:`~npas_lab.studies.block_size_study` (``epochs``, ``kernel_tune``,
        ``device``, ``measure_config``, ``algorithm``).
    """

    def __init__(
        self,
        *,
        model: str = "resnet18",
        rate: float = 6.0,
        blocks: str = "1x1, 4x4, 8x4, 16x4, 8x8, 16x16, whole",
        train_options: dict[str, Any] | None = None,
        **study_options: Any,
    ) -> None:
        from npas_lab.models import list_models

        self.train_options = dict(train_options or {})
        self.study_options = study_options
        self.model = widgets.Dropdown(options=list_models(), value=model, description="model")
        self.rate = widgets.FloatSlider(value=rate, min=1.5, max=16.0, step=0.5, description="rate")
        self.blocks = widgets.Text(value=blocks, description="blocks")
        self.table: pd.DataFrame | None = None
        figure = _block_figure_widget()
        super().__init__([self.model, self.rate, self.blocks], figure, "Run study")

    def run(self) -> pd.DataFrame:
        """Pretrain (cached), then prune, compile and measure each block size."""
        from npas_lab.studies import block_size_study
        from npas_lab.training import TrainConfig, train

        blocks = parse_blocks(self.blocks.value)
        self.status.value = f"pretraining {self.model.value} (cached after the first run) ..."
        trained = train(TrainConfig(model=self.model.value, **self.train_options))
        points: list[dict[str, Any]] = []

        def on_point(row: dict[str, Any]) -> None:
            points.append(row)
            _redraw_blocks(self.figure, pd.DataFrame(points))
            self.status.value = f"{row['block']}: {row['accuracy']:.4f}, {row['latency_ms']:.3f} ms"

        self.table = block_size_study(
            trained.model,
            trained.data,
            rate=self.rate.value,
            blocks=blocks,
            model_name=self.model.value,
            progress=False,
            on_point=on_point,
            **self.study_options,
        )
        self.status.value = f"done: {len(self.table)} points"
        return self.table


def _block_figure_widget() -> Any:
    import plotly.graph_objects as go

    from npas_lab.plotting import block_size_figure

    empty = pd.DataFrame({"block": [], "accuracy": [], "latency_ms": []})
    return go.FigureWidget(block_size_figure(empty))


def _redraw_blocks(figure: Any, df: pd.DataFrame) -> None:
    from npas_lab.plotting import block_size_figure

    fresh = block_size_figure(df)
    with figure.batch_update():
        figure.data = ()
        for trace in fresh.data:
            figure.add_trace(trace)


# ------------------------------------------------------------------------ phase 2: search
class SearchDashboard(widgets.VBox):
    """Controls, a live Pareto figure and the best plan per layer for an NPAS phase-2 search.

    Widgets: model, latency target T (ms), reward form, algorithm, budget; **Start** (a new
    run), **Stop** (after the evaluation in flight) and **Resume** (continue the last run with
    nothing re-evaluated). The figure (a ``FigureWidget``) is redrawn after every evaluation:
    every candidate (accuracy vs measured latency, coloured by reward), the Pareto front, the
    best candidate, the constraint line at T, and the dense zoo. Buttons run the search in a
    background thread so Stop stays clickable; :meth:`run` runs it in the caller's thread
    (what a headless notebook does).

    Parameters
    ----------
    base : TrainConfig
        Dataset, image size, channels and pretraining of the searched model (the model
        dropdown changes only ``model``; pretraining is cached).
    eval_config : EvalConfig
        Fast-evaluation settings.
    space_config : SpaceConfig
        What the search may decide per layer.
    target_ms : float
        Initial latency target T.
    form, algorithm, budget
        Initial reward form, algorithm and budget.
    zoo : pandas.DataFrame, optional
        Dense reference points (:func:`npas_lab.search.zoo.dense_zoo`).
    options : dict, optional
        Keyword options of the algorithm, for every run.
    run_id : str, optional
        A recorded run for :meth:`run` with ``resume=True`` (or the Resume button) to continue.

    Examples
    --------
    >>> dash = SearchDashboard(TrainConfig(), EvalConfig(), SpaceConfig(), target_ms=0.05)
    >>> dash.run()  # doctest: +SKIP
    """

    def __init__(
        self,
        base: Any,
        eval_config: Any,
        space_config: Any,
        *,
        target_ms: float,
        form: str = "soft",
        algorithm: str = "npas",
        budget: int = 20,
        seed: int = 0,
        zoo: pd.DataFrame | None = None,
        options: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> None:
        import threading

        from npas_lab.models import list_models
        from npas_lab.plotting import search_pareto_figure
        from npas_lab.search import REWARD_FORMS, list_algorithms

        self.base, self.eval_config, self.space_config = base, eval_config, space_config
        self.seed, self.zoo, self.options = seed, zoo, dict(options or {})
        self.model = widgets.Dropdown(options=list_models(), value=base.model, description="model")
        self.target = widgets.BoundedFloatText(
            value=target_ms, min=1e-6, max=1e6, step=0.01, description="T (ms)"
        )
        self.form = widgets.ToggleButtons(options=list(REWARD_FORMS), value=form)
        self.algorithm = widgets.Dropdown(
            options=list_algorithms(), value=algorithm, description="algorithm"
        )
        self.budget = widgets.IntSlider(value=budget, min=1, max=200, description="budget")
        self.start_button = widgets.Button(description="Start", icon="play", button_style="primary")
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True)
        self.resume_button = widgets.Button(
            description="Resume", icon="redo", disabled=run_id is None
        )
        self.status = widgets.Label()
        self.figure = search_pareto_figure(target_ms, widget=True)
        self.plan_figure = go_figure_widget()
        self.history = pd.DataFrame()
        self.run_id: str | None = run_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_button.on_click(lambda _: self._background(resume=False))
        self.stop_button.on_click(lambda _: self.stop())
        self.resume_button.on_click(lambda _: self._background(resume=True))
        self.target.observe(self._target_changed, names="value")
        controls = widgets.VBox(
            [
                widgets.HBox([self.model, self.algorithm, self.budget]),
                widgets.HBox([self.target, self.form]),
                widgets.HBox(
                    [self.start_button, self.stop_button, self.resume_button, self.status]
                ),
            ]
        )
        super().__init__(children=[controls, self.figure, self.plan_figure])
        self._redraw()

    def _target_changed(self, change: dict[str, Any]) -> None:
        self.figure.layout.shapes = []
        self.figure.layout.annotations = []
        self.figure.add_vline(
            x=change["new"],
            line_dash="dash",
            line_color="#444444",
            annotation_text=f"T = {change['new']:.3g} ms",
        )

    def _redraw(self) -> None:
        from npas_lab.plotting import plan_layers_figure, update_search_pareto
        from npas_lab.search import plan_table

        update_search_pareto(self.figure, self.history, self.zoo)
        ok = self.history.dropna(subset=["reward"]) if len(self.history) else self.history
        if len(ok):
            best = ok.loc[ok["reward"].idxmax()]
            from npas_lab.sparsity import PruningPlan

            plan = PruningPlan.from_json(best["plan"])
            new = plan_layers_figure(
                plan_table(plan),
                title=f"Best plan (step {best['step']}, reward {best['reward']:.4f})",
            )
            with self.plan_figure.batch_update():
                self.plan_figure.data = []
                self.plan_figure.add_traces(new.data)
                self.plan_figure.layout = new.layout

    def stop(self) -> None:
        """Ask the running search to stop after the evaluation in flight."""
        self._stop.set()
        self.status.value = "stopping after the evaluation in flight ..."

    def _background(self, *, resume: bool) -> None:
        import threading

        self._thread = threading.Thread(target=self.run, kwargs={"resume": resume}, daemon=True)
        self._thread.start()

    def run(self, *, resume: bool = False) -> pd.DataFrame:
        """Run (or resume) a search with the widgets' settings; return its history.

        The figure is redrawn after every evaluation. Returns when the budget is spent or
        :meth:`stop` was called.
        """
        from npas_lab import results
        from npas_lab.search import Evaluator, RewardConfig, SearchSpace, search
        from npas_lab.training import TrainConfig, train

        self._stop.clear()
        for button, disabled in (
            (self.start_button, True),
            (self.resume_button, True),
            (self.stop_button, False),
        ):
            button.disabled = disabled
        try:
            if not resume or self.run_id is None:
                self.run_id, self.history = results.new_run_id(), pd.DataFrame()
            self.status.value = f"pretraining {self.model.value} (cached after the first time)"
            config = TrainConfig(**{**self.base.to_dict(), "model": self.model.value})
            trained = train(config, progress=False)
            space = SearchSpace.from_model(trained.model, self.space_config)
            evaluator = Evaluator(
                trained.model, trained.data, self.eval_config, model_name=self.model.value
            )
            reward = RewardConfig(target_ms=self.target.value, form=self.form.value)
            rows: list[dict[str, Any]] = []
            for ev in search(
                space,
                evaluator,
                reward,
                algorithm=self.algorithm.value,
                budget=self.budget.value,
                seed=self.seed,
                run_id=self.run_id,
                options=self.options,
            ):
                rows.append(ev.to_record())
                self.history = pd.DataFrame(rows)
                self._redraw()
                self.status.value = (
                    f"run {self.run_id}: {ev.step + 1}/{self.budget.value} ({ev.status}); "
                    f"best reward {self.history['reward'].max():.4f}"
                )
                if self._stop.is_set():
                    self.status.value += " - stopped; Resume continues"
                    break
        finally:
            self.start_button.disabled = False
            self.resume_button.disabled = self.run_id is None
            self.stop_button.disabled = True
        return self.history


def go_figure_widget() -> Any:
    """Return an empty plotly ``FigureWidget`` in the house style."""
    import plotly.graph_objects as go

    from npas_lab.plotting import style

    return style(go.FigureWidget())


__all__ += ["SearchDashboard", "go_figure_widget"]
