"""Tests for npas_lab.widgets: the rule checkboxes and the replacement dashboard, headless."""

from __future__ import annotations

import pandas as pd
import pytest
from torch import nn

from npas_lab import widgets
from npas_lab.operators import find_unfriendly, list_rules


class SiLUOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.act(self.conv(x)))


def test_one_checkbox_per_rule_with_call_counts():
    found = find_unfriendly(SiLUOnly(), (1, 1, 4, 4))
    boxes = widgets.RuleCheckboxes(found, selected=["swish"])
    assert list(boxes.checkboxes) == list_rules()
    assert len(boxes.children) == len(list_rules())
    assert boxes.selected == ("swish",)
    assert "(2 calls)" in boxes.checkboxes["swish"].description
    # Nothing to replace: disabled (the sigmoid rule finds no sigmoid here).
    assert boxes.checkboxes["sigmoid"].disabled and not boxes.checkboxes["swish"].disabled
    boxes.checkboxes["swish"].value = False
    assert boxes.selected == ()
    with pytest.raises(ValueError, match="valid rules"):
        widgets.RuleCheckboxes(selected=["hard"])


def fake_deltas(rules) -> pd.DataFrame:
    variants = ["original", *rules]
    n = len(variants)
    return pd.DataFrame(
        {
            "model": "m",
            "variant": variants,
            "variant_kind": ["original"] + ["rule"] * (n - 1),
            "accuracy": [0.9] * n,
            "accuracy_delta": [0.0] * n,
            "accuracy_finetuned": [0.9] * n,
            "accuracy_finetuned_delta": [0.0] * n,
            "latency_ms": [2.0] + [1.0] * (n - 1),
            "latency_delta_ms": [0.0] + [-1.0] * (n - 1),
            "spread_ms": [0.1] * n,
            "speedup": [1.0] + [2.0] * (n - 1),
        }
    )


def test_dashboard_button_measures_the_ticked_rules(monkeypatch):
    calls = []

    def measure(model, data, *, rules, **options):
        calls.append((tuple(rules), options))
        return fake_deltas(rules)

    monkeypatch.setattr(widgets, "measure_replacement", measure)
    model = SiLUOnly()
    board = widgets.ReplacementDashboard(
        model, data=None, rules=("sigmoid", "swish"), initial=fake_deltas(["sigmoid", "swish"]),
        device="host-cpu", finetune_epochs=0,
    )  # fmt: skip
    assert board.status.value == "measured above: sigmoid, swish"
    assert calls == []  # the initial rows are kept, nothing is measured
    assert board.deltas["variant"].tolist() == ["original", "sigmoid", "swish"]
    board.rules.checkboxes["sigmoid"].value = False
    assert "press Measure" in board.status.value
    board.button.click()
    assert calls == [(("swish",), {"device": "host-cpu", "finetune_epochs": 0})]
    assert board.deltas["variant"].tolist() == ["original", "swish"]
    assert board.status.value == "showing swish" and not board.button.disabled
