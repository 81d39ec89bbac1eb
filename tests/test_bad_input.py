"""One test per row of docs/errors.md: bad input gives a clear error and loses no records."""

from __future__ import annotations

import os
import re

import pytest
import torch

from npas_lab import cli, data, results
from npas_lab.models import create_model
from npas_lab.sparsity import (
    LayerChoice,
    PruningPlan,
    SparsityError,
    apply_plan,
    compute_mask,
    validate_plan,
)


@pytest.fixture
def recorded(isolated_home):
    """A results table with two records that no error below may lose."""
    for i in range(2):
        results.append("measurements", {"kind": "kept", "i": i})
    path = results.table_path("measurements")
    before = path.read_bytes()
    yield path
    assert path.read_bytes()[: len(before)] == before, "a bad input changed earlier records"


def cli_error(argv, capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_unknown_model(recorded, capsys):
    with pytest.raises(ValueError, match=r"Unknown model 'resnet19'; valid names: .*resnet18"):
        create_model("resnet19")
    assert "resnet19" in cli_error(["train", "--model", "resnet19"], capsys)


def test_unknown_dataset(recorded, capsys):
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; valid: digits, cifar10"):
        data.load_dataset("mnist")
    assert "mnist" in cli_error(["train", "--dataset", "mnist"], capsys)


def test_unknown_scheme(recorded):
    with pytest.raises(SparsityError, match=r"unknown sparsity scheme 'blocky'.*block_punched"):
        LayerChoice(scheme="blocky", rate=2.0)


def test_unknown_device(recorded, capsys):
    from npas_lab.compiler import compile_model

    with pytest.raises(ValueError, match=r"Unknown device 'pixel'; valid names: .*host-cpu"):
        compile_model(torch.nn.Linear(2, 2), torch.randn(1, 2), "pixel")
    assert "pixel" in cli_error(["measure", "--device", "pixel", "--epochs", "1"], capsys)


def test_a_plan_that_does_not_fit_the_model(recorded):
    model = create_model("small_cnn", input_size=16)
    wrong_layer = PruningPlan({"features.9": LayerChoice(scheme="unstructured", rate=2.0)})
    with pytest.raises(SparsityError, match=r"'features.9' is not a Conv2d/Linear.*did you mean"):
        validate_plan(wrong_layer, model)
    wrong_scheme = PruningPlan({"classifier": LayerChoice(scheme="pattern", rate=3.0)})
    with pytest.raises(SparsityError, match=r"'pattern' does not fit layer 'classifier'"):
        apply_plan(model, wrong_scheme)


def test_a_rate_below_1(recorded):
    with pytest.raises(SparsityError, match=r"rate must be a finite number >= 1.*got 0.5"):
        LayerChoice(scheme="unstructured", rate=0.5)


def test_a_rate_beyond_what_a_scheme_can_do(recorded):
    weight = torch.randn(8, 4, 3, 3)
    with pytest.raises(SparsityError, match=r"filter pruning cannot reach rate 100.*1 .* to 8"):
        compute_mask(weight, "filter", 100.0, layer="conv1")
    with pytest.raises(SparsityError, match=r"36 punches"):
        compute_mask(weight, "block_punched", 1e6, block=(8, 4), layer="conv1")


def test_a_corrupt_results_file(isolated_home):
    for i in range(3):
        results.append("t", {"i": i})
    path = results.table_path("t")
    lines = path.read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]  # an edit that cut a record in the middle
    path.write_text("\n".join(lines) + "\n")
    damaged = path.read_bytes()
    with pytest.raises(results.ResultsCorruptError, match=rf"{path.name}:2"):
        results.load("t")
    assert path.read_bytes() == damaged  # nothing rewritten or dropped


def test_a_truncated_results_file(isolated_home):
    for i in range(3):
        results.append("t", {"i": i})
    path = results.table_path("t")
    path.write_bytes(path.read_bytes()[:-7])  # a crash in the middle of the last write
    with pytest.warns(RuntimeWarning, match=path.name):
        assert results.load("t")["i"].tolist() == [0, 1]
    with pytest.warns(RuntimeWarning, match="dropped an incomplete last line"):
        results.append("t", {"i": 3})  # the torn record is cut, not glued to the new one
    assert results.load("t")["i"].tolist() == [0, 1, 3]


def test_a_missing_cross_compiler(recorded, monkeypatch):
    from npas_lab.devices.cross import ToolchainError, check_toolchain

    monkeypatch.setenv("PATH", os.devnull)  # no compiler of any kind on the PATH
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    with pytest.raises(ToolchainError, match=r"android-arm64.*apt-get install gcc-aarch64"):
        check_toolchain("android-arm64")


def test_an_unreachable_tracker(recorded, capsys):
    from npas_lab.devices.rpc import TrackerUnreachableError, connect_tracker

    with pytest.raises(TrackerUnreachableError, match=r"no TVM RPC tracker at 127.0.0.1:9.*start"):
        connect_tracker("127.0.0.1", 9, timeout_s=1)
    assert "127.0.0.1:9" in cli_error(["device", "list", "--tracker", "127.0.0.1:9"], capsys)


def test_a_dataset_download_while_offline(recorded, no_network):
    with pytest.raises(data.DatasetUnavailableError, match=r"cifar-10-python\.tar\.gz"):
        data.load_dataset("cifar10")


def test_an_unknown_compile_option(recorded):
    from npas_lab.compiler import compile_model

    with pytest.raises(ValueError, match=r"kernels='mkl': choose one of auto, templates, tvm"):
        compile_model(torch.nn.Linear(2, 2), torch.randn(1, 2), kernels="mkl")


def test_a_wrong_input_shape_for_a_compiled_model(recorded):
    from npas_lab.compiler import compile_model

    compiled = compile_model(torch.nn.Linear(4, 2), torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"compiled for input shape \(1, 4\).*got shape \(2, 4\)"):
        compiled(torch.randn(2, 4))


def test_an_unknown_search_algorithm(recorded):
    from npas_lab.search import SearchSpace, make_algorithm

    space = SearchSpace.from_model(create_model("small_cnn", in_channels=1, input_size=8))
    with pytest.raises(ValueError, match=r"unknown search algorithm 'evolution'; valid: .*npas"):
        make_algorithm("evolution", space)


def test_an_unreachable_dask_scheduler(recorded, capsys):
    from npas_lab.search.executors import SchedulerUnreachableError, resolve_executor

    with pytest.raises(
        SchedulerUnreachableError, match=r"'tcp://127.0.0.1:9'.*`dask worker tcp://127.0.0.1:9`"
    ):
        resolve_executor("tcp://127.0.0.1:9", timeout_s=1)
    err = cli_error(["search", "--scheduler", "tcp://127.0.0.1:9"], capsys)
    assert "tcp://127.0.0.1:9" in err and "dask scheduler" in err


def test_every_row_of_the_table_has_its_test():
    table = (results.paths.REPO_ROOT / "docs" / "errors.md").read_text()
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| ")][1:]
    slugs = [re.sub(r"\W+", "_", row.split("(")[0].strip().lower()).strip("_") for row in rows]
    missing = [slug for slug in slugs if f"test_{slug}" not in globals()]
    assert len(slugs) >= 14 and not missing, missing
