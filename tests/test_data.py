"""Dataset registry: digits offline, deterministic splits, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npas_lab import data


def test_digits_golden_statistics_and_shapes():
    splits = data.load_dataset("digits", image_size=16)
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == data.DIGITS_NUM_IMAGES == 1797
    assert sizes[2] == 360  # 20% of 1797, rounded up by scikit-learn
    images, labels = splits.train.tensors
    assert images.shape[1:] == (1, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))
    assert splits.num_classes == 10 and splits.input_shape == (1, 1, 16, 16)
    # Standardised with training statistics.
    assert abs(images.mean().item()) < 1e-4 and abs(images.std().item() - 1) < 1e-2


def test_splits_are_deterministic_disjoint_and_stratified():
    a = data.load_dataset("digits", image_size=8, seed=3)
    b = data.load_dataset("digits", image_size=8, seed=3)
    c = data.load_dataset("digits", image_size=8, seed=4)
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert not torch.equal(a.test.tensors[0], c.test.tensors[0])
    # Disjoint: no test image appears in train (digits has few exact duplicates; compare rows).
    train = {tuple(r) for r in a.train.tensors[0].flatten(1).numpy().round(4)}
    overlap = sum(tuple(r) in train for r in a.test.tensors[0].flatten(1).numpy().round(4))
    assert overlap <= 3
    counts = np.bincount(a.test.tensors[1].numpy(), minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # ~36 per class


def test_three_channel_digits_repeat_the_grey_channel():
    splits = data.load_dataset("digits", image_size=12, in_channels=3)
    x = splits.train.tensors[0]
    assert x.shape[1:] == (3, 12, 12)
    # Same grey image in each channel up to per-channel standardisation.
    corr = np.corrcoef(x[:, 0].flatten().numpy(), x[:, 2].flatten().numpy())[0, 1]
    assert corr > 0.999


def test_loader_batches_and_example_input():
    splits = data.load_dataset("digits")
    batch = next(iter(splits.loader("train", batch_size=32)))
    assert batch[0].shape == (32, 1, 16, 16)
    assert splits.example_input().shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="split='dev'"):
        splits.loader("dev")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*digits.*cifar10.*imagefolder"):
        data.load_dataset("mnist")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 2}, "image_size=2"),
        ({"in_channels": 2}, "in_channels=2"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "sum to less than 1"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load_dataset("digits", **kwargs)


def test_cifar10_offline_and_absent_says_where_to_put_the_files(no_network, isolated_home):
    with pytest.raises(data.DatasetUnavailableError, match=r"cifar-10-python\.tar\.gz.*cifar10"):
        data.load_dataset("cifar10")
    with pytest.raises(data.DatasetUnavailableError, match="downloads are off"):
        data.load_dataset("cifar10", download=False)


def test_imagefolder_loads_your_own_images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 255, size=(20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    splits = data.load_dataset(
        f"imagefolder:{root}", image_size=8, in_channels=3, val_fraction=0.2, test_fraction=0.2
    )
    assert splits.classes == ("cat", "dog") and splits.num_classes == 2
    assert splits.train.tensors[0].shape[1:] == (3, 8, 8)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 20


def test_imagefolder_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(data.DatasetUnavailableError, match="is not a folder"):
        data.load_dataset(f"imagefolder:{tmp_path / 'nope'}")
