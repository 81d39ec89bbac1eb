"""npas_lab.compiler.artifact: save a compiled model, load it back, run it without recompiling."""

from __future__ import annotations

import json

import pytest
import torch

from npas_lab import paths
from npas_lab.compiler import (
    CompiledModel,
    LoadedModel,
    compile_model,
    load_artifact,
    save_artifact,
)
from npas_lab.compiler.artifact import LIBRARY, METADATA, artifact_key
from npas_lab.devices import MeasureConfig, measure
from npas_lab.models import create_model

SHAPE = (1, 3, 16, 16)
PLAN = {"features.0": {"filter_type": "3x3", "scheme": "block", "rate": 4.0, "block": [8, 4]}}


@pytest.fixture(scope="module")
def compiled() -> CompiledModel:
    torch.manual_seed(0)
    model = create_model("small_cnn", input_size=SHAPE[-1]).eval()
    return compile_model(model, torch.randn(SHAPE), name="small_cnn")


def test_saved_artifact_reloads_and_matches(compiled):
    folder = save_artifact(compiled, plan=PLAN, extra={"accuracy": 0.5})
    assert folder.parent == paths.results_dir() / "artifacts"
    assert {p.name for p in folder.iterdir()} == {LIBRARY, METADATA}
    loaded = load_artifact(folder)
    assert isinstance(loaded, LoadedModel) and isinstance(loaded, CompiledModel)
    assert loaded.mod is None  # nothing to rebuild from: it runs the saved library
    x = torch.randn(SHAPE)
    assert torch.equal(loaded(x), compiled(x))
    assert loaded.input_shape == SHAPE and loaded.input_dtype == torch.float32
    assert loaded.target == compiled.target and loaded.device == "host-cpu"


def test_metadata_records_what_produced_the_library(compiled):
    folder = save_artifact(compiled, plan=PLAN, extra={"accuracy": 0.5})
    meta = json.loads((folder / METADATA).read_text())
    assert meta["name"] == "small_cnn" and meta["key"] == folder.name
    assert meta["input_shape"] == list(SHAPE) and meta["input_dtype"] == "float32"
    assert meta["target"] == compiled.target
    assert meta["device"]["name"] == "host-cpu"
    assert meta["plan"] == PLAN
    assert meta["options"]["fuse"] is True and meta["tuning"] is None
    assert meta["extra"] == {"accuracy": 0.5}
    packages = meta["environment"]["packages"]
    assert packages["apache-tvm"] and packages["torch"]


def test_key_is_stable_and_depends_on_the_plan(compiled):
    key = artifact_key(compiled, plan=PLAN)
    assert key == artifact_key(compiled, plan=PLAN)
    assert key.startswith("small_cnn-")
    assert artifact_key(compiled) != key
    assert save_artifact(compiled, plan=PLAN).name == key


def test_load_by_key_and_measure(compiled):
    key = save_artifact(compiled, key="my-model").name
    loaded = load_artifact(key)
    assert loaded.path.name == "my-model"
    m = measure(loaded, torch.randn(SHAPE), config=MeasureConfig(warmup=1, repeat=3))
    assert m.engine == "tvm" and m.latency_ms > 0 and m.model == "small_cnn"


def test_loaded_library_can_be_exported_again(compiled, tmp_path):
    loaded = load_artifact(save_artifact(compiled))
    path = loaded.export_library(tmp_path / "copy.so")
    assert path.read_bytes()[:4] == b"\x7fELF"


def test_unknown_key_lists_known_ones(compiled):
    save_artifact(compiled, key="known-one")
    with pytest.raises(FileNotFoundError, match="known-one"):
        load_artifact("no-such-model")


def test_existing_key_is_kept_unless_overwrite(compiled):
    save_artifact(compiled, key="keep")
    with pytest.raises(FileExistsError):
        save_artifact(compiled, key="keep", overwrite=False)
    with pytest.raises(ValueError, match="artifact key"):
        save_artifact(compiled, key="../escape")
