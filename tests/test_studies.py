"""npas_lab.studies: the block-size study and the Fig. 2b grid, on real data and real kernels."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from npas_lab import results, studies
from npas_lab.devices import MeasureConfig
from npas_lab.plotting import block_size_figure, scheme_speedup_figure
from npas_lab.sparsity import scheme_masks
from npas_lab.training import TrainConfig, train
from npas_lab.widgets import parse_blocks

QUICK = MeasureConfig(warmup=1, repeat=3, number=1, min_repeat_ms=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    # Module-scoped: the checkpoint lives in this module's own home, not the per-test one.
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NPAS_LAB_HOME", str(home))
        return train(TrainConfig(model="small_cnn", image_size=8, epochs=2))


def test_block_size_study_records_every_point_and_resumes(trained):
    blocks = [(1, 1), (8, 4), studies.WHOLE_LAYER]
    points = []
    df = studies.block_size_study(
        trained.model,
        trained.data,
        rate=4.0,
        blocks=blocks,
        epochs=1,
        measure_config=QUICK,
        run_id="study",
        progress=False,
        on_point=points.append,
    )
    assert df.block.tolist() == ["dense", "1x1", "8x4", "whole layer"]
    assert [p["block"] for p in points] == df.block.tolist()
    assert (df.latency_ms > 0).all() and df.accuracy.between(0, 1).all()
    pruned = df[df.block != "dense"]
    assert pruned.achieved_rate.round(1).eq(4.0).all()
    stored = results.load(studies.BLOCK_TABLE)
    assert sorted(stored.block) == sorted(df.block)
    # A rerun under the same id measures nothing again: same rows, no new records.
    again = studies.block_size_study(
        trained.model, trained.data, rate=4.0, blocks=blocks, run_id="study", progress=False
    )
    assert again.latency_ms.tolist() == df.latency_ms.tolist()
    assert len(results.load(studies.BLOCK_TABLE)) == len(stored)
    # The saved artifacts are measured again side by side, without recompiling.
    side_by_side = studies.remeasure_block_sizes("study", rounds=2, measure_config=QUICK)
    assert sorted(side_by_side.block) == sorted(df.block)
    assert (side_by_side.latency_ms > 0).all()
    assert side_by_side.set_index("block").speedup["dense"] == 1.0
    with pytest.raises(ValueError, match="no block-size points recorded under run_id='nope'"):
        studies.remeasure_block_sizes("nope")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"blocks": [(8,)]}, r"blocks: \(8,\) is not a pair"),
        ({"blocks": [(0, 4)]}, r"pair of positive ints"),
        ({"rate": 0.5}, r"rate=0.5: a pruning rate is >= 1"),
    ],
)
def test_bad_study_arguments_are_named(trained, kwargs, message):
    with pytest.raises(ValueError, match=message):
        studies.block_size_study(trained.model, trained.data, progress=False, **kwargs)


def test_scheme_speedups_are_measured_recorded_and_drawn():
    df = studies.measure_scheme_speedups(
        channels=16, size=8, rates=(4.0,), rounds=2, progress=False
    )
    assert set(df.label) == {label for label, *_ in studies.SPEEDUP_SCHEMES}
    assert (df.speedup > 0).all() and (df.dense_ms > 0).all()
    stored = studies.scheme_speedups(source="notebook")
    assert len(stored) == len(df)
    assert studies.scheme_speedups(source="benchmark").empty
    fig = scheme_speedup_figure(df)
    assert {t.name for t in fig.data} >= set(df.label)


def test_block_size_figure_names_missing_columns():
    with pytest.raises(ValueError, match="latency_ms"):
        block_size_figure(__import__("pandas").DataFrame({"block": [], "accuracy": []}))


def test_block_size_figure_draws_points_in_latency_order_with_half_iqr_bars():
    import pandas as pd

    df = pd.DataFrame(
        {
            "block": ["8x4", "1x1", "dense"],
            "accuracy": [0.97, 0.98, 0.99],
            "latency_ms": [1.0, 2.0, 4.0],
            "spread_ms": [0.2, 0.4, 0.0],
        }
    ).iloc[[1, 0, 2]]
    points, dense = block_size_figure(df).data
    assert points.mode == "markers+text"  # block sizes are categories: no connecting line
    assert list(points.text) == ["8x4", "1x1"] and list(points.x) == [1.0, 2.0]
    assert list(points.error_x.array) == [0.1, 0.2]
    assert list(points.textposition) == ["top center", "bottom center"]
    assert list(dense.x) == [4.0]


def test_parse_blocks_reads_pairs_and_whole_and_names_bad_entries():
    assert parse_blocks("1x1, 8x4,whole") == [(1, 1), (8, 4), studies.WHOLE_LAYER]
    with pytest.raises(ValueError, match="block '8by4'"):
        parse_blocks("8by4")
    with pytest.raises(ValueError, match="no block sizes"):
        parse_blocks(" , ")


@given(
    st.sampled_from([(8, 4, 3, 3), (8, 4, 1, 1), (6, 5)]),
    st.sampled_from([2.0, 3.0, 4.0]),
)
def test_scheme_masks_hit_the_rate_for_every_scheme(shape, rate):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    masks = scheme_masks(weight, rate)
    assert "unstructured" in masks and "dense" not in masks
    per_filter = weight[0].numel()  # the largest group any scheme removes at once
    per_channel = weight[:, 0].numel()
    for name, mask in masks.items():
        assert mask.shape == weight.shape
        kept = int(mask.sum())
        # exact up to one group of the scheme (a filter, a channel, a block column...)
        assert abs(kept - weight.numel() / rate) <= max(per_filter, per_channel), name
