"""ipywidgets dashboards that drive the package and redraw figures live.

:class:`RuleCheckboxes`
    One checkbox per registered operator rule (phase 1), ticked for the rules applied.
:class:`ReplacementDashboard`
    Those checkboxes, a button that runs :func:`npas_lab.operators.measure_replacement` on the
    ticked rules, and the deltas figure and table of the last run.

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

__all__ = ["ReplacementDashboard", "RuleCheckboxes"]


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
