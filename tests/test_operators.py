"""Tests for npas_lab.operators: finding and replacing mobile-unfriendly operators (phase 1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn
from torch.testing import assert_close
from torchvision.ops import SqueezeExcitation

from npas_lab import operators
from npas_lab.models import create_model, list_models
from npas_lab.operators import (
    FIND_COLUMNS,
    OP_KINDS,
    REPORT_COLUMNS,
    RULES,
    Rule,
    UntraceableModelError,
    find_unfriendly,
    get_rule,
    list_rules,
    register_rule,
    replace_operators,
    replacement_report,
)

SHAPE = (2, 3, 8, 8)
PER_MAP = 2 * 8 * 8 * 8  # elements of one activation of the 8-channel 8x8 feature map, batch 2


class AllForms(nn.Module):
    """Every form once: module Sigmoid/SiLU, torch.sigmoid, x.sigmoid(), F.silu, swish, SE."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.sig = nn.Sigmoid()
        self.act = nn.SiLU()
        self.se = SqueezeExcitation(8, 2)  # fc1 -> ReLU -> fc2 -> nn.Sigmoid gate
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        a = self.sig(x) + self.act(x) + torch.sigmoid(x) + x.sigmoid() + F.silu(x)
        a = a + x * torch.sigmoid(x)
        return self.head(self.se(a))


def hard_all_forms(model: AllForms, x: torch.Tensor) -> torch.Tensor:
    """AllForms written by hand with every sigmoid hard-sigmoid and every swish hard-swish."""
    x = model.conv(x)
    hsig, hswish = F.hardsigmoid, F.hardswish
    a = hsig(x) + hswish(x) + hsig(x) + hsig(x) + hswish(x) + hswish(x)
    se = model.se
    gate = hsig(se.fc2(se.activation(se.fc1(se.avgpool(a)))))
    return model.head(gate * a)


class ModuleForms(nn.Module):
    """Module forms only, one module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.act = nn.SiLU(inplace=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        return self.act(x) * self.gate(x.mean((2, 3), keepdim=True))


class ShapeBranch(nn.Module):
    """Branches on a shape, which torch.fx cannot trace (torch.export specialises it)."""

    def __init__(self, *, functional: bool = False) -> None:
        super().__init__()
        self.functional = functional
        self.conv = nn.Conv2d(3, 4, 1)
        self.act = nn.SiLU()
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        if x.shape[-1] > 4:
            x = self.gate(x)
        return torch.sigmoid(x) if self.functional else x


def counts(table) -> dict[tuple[str, str], int]:
    return table.groupby(["form", "kind"])["count"].sum().to_dict()


def module_census(model: nn.Module) -> dict[str, int]:
    """Count unfriendly modules by iterating the modules, independently of any tracing."""
    found: dict[str, int] = {}
    for module in model.modules():
        for kind, spec in OP_KINDS.items():
            if isinstance(module, spec.modules):
                found[kind] = found.get(kind, 0) + 1
    return found


def test_every_form_is_found_with_its_kind_location_and_elements():
    table = find_unfriendly(AllForms(), SHAPE)
    assert tuple(table.columns) == FIND_COLUMNS
    assert table.attrs["tracer"] == "fx"
    rows = list(table[["location", "module", "form", "kind", "elements"]].itertuples(index=False))
    assert [tuple(row) for row in rows] == [
        ("sig", "", "module", "sigmoid", PER_MAP),
        ("act", "", "module", "silu", PER_MAP),
        ("sigmoid", "", "function", "sigmoid", PER_MAP),
        ("sigmoid_1", "", "method", "sigmoid", PER_MAP),
        ("silu", "", "function", "silu", PER_MAP),
        ("mul", "", "swish-pattern", "silu", PER_MAP),
        ("se.scale_activation", "se", "module", "sigmoid", 2 * 8),  # the SE gate is (2, 8, 1, 1)
    ]
    assert table.groupby("kind")["count"].sum().to_dict() == {"sigmoid": 4, "silu": 3}
    assert set(table["rule"]) == {"sigmoid", "swish"}
    assert table.set_index("kind")["suggestion"].to_dict() == {
        "sigmoid": "hardsigmoid",
        "silu": "hardswish",
    }


def test_a_module_called_twice_is_one_row_with_count_two():
    table = find_unfriendly(ModuleForms(), SHAPE)
    act = table.set_index("location").loc["act"]
    assert (act["count"], act["elements"], act["elements_per_call"]) == (2, 2 * PER_MAP, PER_MAP)
    assert counts(table) == {("module", "silu"): 2, ("module", "sigmoid"): 1}


class Misc(nn.Module):
    """Forms that must (or must not) be recognised, besides AllForms's common ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.sigmoid(x) + torch.special.expit(x)  # F.sigmoid traces to x.sigmoid()
        y = y + torch.mul(torch.sigmoid(x), x)  # swish, gate first
        y = y * torch.sigmoid(x)  # gating another tensor: a plain sigmoid, not swish
        s = x.sigmoid()
        y = y + x * s + s  # swish whose sigmoid is also used alone: two sites
        y = y + F.gelu(x) + torch.tanh(x) + F.tanh(x)  # F.tanh traces to x.tanh()
        return y + F.softplus(x) + F.mish(x) + F.elu(x)


def test_other_kinds_and_swish_variants():
    table = find_unfriendly(Misc(), (1, 5))
    assert counts(table) == {
        ("method", "sigmoid"): 2,  # F.sigmoid, s
        ("function", "sigmoid"): 2,  # expit, the gate of y
        ("swish-pattern", "silu"): 2,
        ("function", "gelu"): 1,
        ("function", "tanh"): 1,
        ("method", "tanh"): 1,
        ("function", "softplus"): 1,
        ("function", "mish"): 1,
        ("function", "elu"): 1,
    }
    assert set(table["elements"]) == {5}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=32))
def test_hard_variants_match_their_definitions(values):
    x = torch.tensor(values, dtype=torch.float32)
    hard_sigmoid = F.relu6(x + 3) / 6
    hard_swish = x * F.relu6(x + 3) / 6
    assert_close(RULES["sigmoid"].function(x), hard_sigmoid)
    assert_close(RULES["sigmoid"].module(nn.Sigmoid())(x), hard_sigmoid)
    assert_close(RULES["swish"].function(x), hard_swish)
    assert_close(RULES["swish"].module(nn.SiLU())(x), hard_swish)
    # x * hardsigmoid(x) is hard-swish: why the sigmoid rule alone also clears a swish pattern.
    assert_close(x * RULES["sigmoid"].function(x), hard_swish)
    assert_close(RULES["swish"].function(x.clone(), inplace=True), hard_swish)


def test_replacement_of_every_form_clears_them_and_matches_hand_written_hard_model():
    torch.manual_seed(0)
    model = AllForms()
    new = replace_operators(model)
    assert isinstance(new, fx.GraphModule)
    assert type(new).__name__ == "AllForms"
    assert find_unfriendly(new, SHAPE).empty
    assert list(new.state_dict()) == list(model.state_dict())
    x = torch.randn(SHAPE)
    with torch.no_grad():
        assert_close(new(x), hard_all_forms(model, x))


def test_module_forms_are_swapped_keeping_class_keys_flags_and_weights():
    model = ModuleForms().train()
    model.gate.eval()  # a mixed-mode model: flags must survive as they are
    new = replace_operators(model)
    assert type(new) is ModuleForms
    assert isinstance(new.act, nn.Hardswish) and new.act.inplace
    assert isinstance(new.gate, nn.Hardsigmoid)
    assert [m.training for m in new.modules()] == [m.training for m in model.modules()]
    assert list(new.state_dict()) == list(model.state_dict())
    new.load_state_dict(model.state_dict())  # strict: weights load unchanged
    assert find_unfriendly(new, SHAPE).empty


def test_original_model_is_untouched():
    torch.manual_seed(0)
    model = AllForms()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    x = torch.randn(SHAPE)
    with torch.no_grad():
        expected = model(x)
    replace_operators(model)
    assert [type(m) for m in model.modules()] == types
    assert all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    with torch.no_grad():
        assert_close(model(x), expected, rtol=0, atol=0)
    assert counts(find_unfriendly(model, SHAPE))[("swish-pattern", "silu")] == 1


def test_report_lists_what_each_rule_replaced():
    report = replacement_report(AllForms(), input_shape=SHAPE)
    assert tuple(report.columns) == REPORT_COLUMNS
    assert report.groupby("rule")["count"].sum().to_dict() == {"sigmoid": 4, "swish": 3}
    assert set(zip(report["rule"], report["replacement"], strict=True)) == {
        ("sigmoid", "hardsigmoid"),
        ("swish", "hardswish"),
    }


def test_sigmoid_rule_alone_turns_swish_into_x_times_hardsigmoid():
    torch.manual_seed(0)
    model = AllForms()
    report = replacement_report(model, rules="sigmoid", input_shape=SHAPE)
    # The swish pattern shows its sigmoid (function torch.sigmoid), replaced by the sigmoid rule.
    assert counts(report) == {("module", "sigmoid"): 2, ("function", "sigmoid"): 2,
                              ("method", "sigmoid"): 1}  # fmt: skip
    new = replace_operators(model, rules=("sigmoid",))
    left = find_unfriendly(new, SHAPE)
    assert counts(left) == {("module", "silu"): 1, ("function", "silu"): 1}
    swish_only = replace_operators(model, rules=("swish",))
    assert counts(find_unfriendly(swish_only, SHAPE)) == {
        ("module", "sigmoid"): 2,
        ("function", "sigmoid"): 1,
        ("method", "sigmoid"): 1,
    }
    both = replace_operators(new, rules=("swish",))  # x * hardsigmoid(x) == hardswish(x)
    x = torch.randn(SHAPE)
    with torch.no_grad():
        assert_close(both(x), hard_all_forms(model, x))


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y.sigmoid_()  # result unused: only the mutation of y carries it
        z = self.conv(x)
        F.silu(z, inplace=True)
        w = self.conv(x)
        w.mul_(torch.sigmoid(w))
        return y + z + w


def test_in_place_forms_stay_in_place():
    torch.manual_seed(0)
    model = InPlace()
    assert counts(find_unfriendly(model, SHAPE)) == {
        ("method", "sigmoid"): 1,
        ("function", "silu"): 1,
        ("swish-pattern", "silu"): 1,
    }
    new = replace_operators(model)
    x = torch.randn(SHAPE)
    with torch.no_grad():
        y = model.conv(x)
        assert_close(new(x), F.hardsigmoid(y) + 2 * F.hardswish(y))


@pytest.mark.parametrize("name", list_models())
def test_registry_models_known_counts_and_clean_replacement(name):
    model = create_model(name, input_size=32)
    table = find_unfriendly(model, (1, 3, 32, 32))
    expected = {"silu": 49, "sigmoid": 16} if name.startswith("efficientnet") else {}
    # MobileNet-V3 already uses Hardswish/Hardsigmoid; ResNets and small_cnn only ReLU.
    assert table.groupby("kind")["count"].sum().to_dict() == expected
    assert set(table["form"]) <= {"module"}
    assert module_census(model) == expected
    new = replace_operators(model)
    assert type(new) is type(model)
    assert list(new.state_dict()) == list(model.state_dict())
    assert find_unfriendly(new, (1, 3, 32, 32)).empty


def calibrate_batch_norm(model: nn.Module) -> None:
    """Set running statistics from one random batch, so eval outputs of a fresh net are O(1)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    model.eval()


@pytest.mark.slow
def test_efficientnet_b0_replaced_compiles_with_tvm_and_matches_pytorch():
    compiler = pytest.importorskip("npas_lab.compiler")
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", num_classes=10, input_size=32)
    census = module_census(model)
    table = find_unfriendly(model, (1, 3, 32, 32))
    assert table.groupby("kind")["count"].sum().to_dict() == census == {"silu": 49, "sigmoid": 16}
    new = replace_operators(model)
    assert sum(isinstance(m, nn.Hardswish) for m in new.modules()) == 49
    assert sum(isinstance(m, nn.Hardsigmoid) for m in new.modules()) == 16
    calibrate_batch_norm(new)
    x = torch.randn(1, 3, 32, 32)
    compiled = compiler.compile_model(new, x)
    with torch.no_grad():
        expected = new(x)
    assert expected.abs().max() > 1  # not a vanishing output that would match anything
    assert_close(compiled(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("build", [AllForms, InPlace])
def test_rewritten_graph_modules_compile_with_tvm(build):
    compiler = pytest.importorskip("npas_lab.compiler")
    torch.manual_seed(0)
    new = replace_operators(build()).eval()
    x = torch.randn(SHAPE)
    with torch.no_grad():
        expected = new(x)
    assert_close(compiler.compile_model(new, x)(x), expected, rtol=1e-4, atol=1e-4)


def test_untraceable_by_fx_falls_back_to_torch_export():
    table = find_unfriendly(ShapeBranch(functional=True), SHAPE)
    assert table.attrs["tracer"] == "export"
    assert list(table["location"])[:2] == ["act", "gate"]
    assert counts(table) == {
        ("module", "silu"): 1,
        ("module", "sigmoid"): 1,
        ("function", "sigmoid"): 1,
    }
    new = replace_operators(ShapeBranch(), input_shape=SHAPE)
    assert type(new) is ShapeBranch
    assert find_unfriendly(new, SHAPE).empty
    with pytest.raises(UntraceableModelError, match="cannot be rewritten"):
        replace_operators(ShapeBranch(functional=True), input_shape=SHAPE)
    with pytest.raises(UntraceableModelError, match="pass input_shape"):
        replace_operators(ShapeBranch())


def test_unknown_rule_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"valid rules: gelu, sigmoid, swish, tanh"):
        replace_operators(AllForms(), rules=("sigmoid", "hard"))
    with pytest.raises(ValueError, match="valid rules"):
        get_rule("relu")
    assert list_rules() == ["gelu", "sigmoid", "swish", "tanh"]


def test_registering_a_rule(monkeypatch):
    monkeypatch.setattr(operators, "RULES", dict(RULES))
    mish = Rule(kinds=("mish",), module=lambda old: nn.Hardswish(), function=F.hardswish,
                produces="hardswish")  # fmt: skip
    register_rule("mish", mish)
    with pytest.raises(ValueError, match="exists"):
        register_rule("mish", mish)
    with pytest.raises(ValueError, match="valid kinds: elu, gelu, mish"):
        register_rule("bad", Rule(("swishy",), nn.Hardswish, F.hardswish, "hardswish"))
    with pytest.raises(TypeError):
        register_rule("bad", F.hardswish)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="both replace 'silu'"):
        register_rule("swish2", RULES["swish"])
        replace_operators(AllForms(), rules=("swish", "swish2"))

    model = nn.Sequential(nn.Linear(4, 4), nn.Mish())
    new = replace_operators(model, rules=("mish",))
    assert isinstance(new[1], nn.Hardswish)
    assert find_unfriendly(new, (2, 4)).empty
