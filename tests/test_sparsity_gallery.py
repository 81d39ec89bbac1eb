"""Tests for npas_lab.plotting.mask_gallery_figure: one subplot per scheme, house colours."""

from __future__ import annotations

import torch

from npas_lab.plotting import COLORS, mask_gallery_figure
from npas_lab.sparsity import compute_mask


def test_gallery_has_one_heatmap_per_scheme_in_the_scheme_colour():
    weight = torch.randn(32, 16, 3, 3, generator=torch.Generator().manual_seed(0))
    schemes = ["unstructured", "filter", "channel", "column", "pattern", "block_punched"]
    masks = {s: compute_mask(weight, s, 4.0) for s in schemes}
    fig = mask_gallery_figure(weight, masks, title="layer")
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert [t.name for t in heatmaps] == schemes
    assert [a.text for a in fig.layout.annotations] == schemes
    assert len({(t.xaxis, t.yaxis) for t in heatmaps}) == len(schemes)  # separate subplots
    for trace in heatmaps:
        assert trace.colorscale[-1][1] == COLORS[trace.name]
        assert trace.z.shape == (16, 8 * 9)  # first 16 filters x 8 channels of 3x3
        # kept weights are coloured (> 0), pruned ones white (0)
        keep = masks[trace.name].reshape(32, -1)[:16, :72].numpy()
        assert ((trace.z > 0) == keep).all()


def test_gallery_crops_to_small_layers_and_accepts_linear_weights():
    weight = torch.randn(4, 6)
    fig = mask_gallery_figure(weight, {"block": compute_mask(weight, "block", 2.0, block=(2, 2))})
    assert fig.data[0].z.shape == (4, 6)
