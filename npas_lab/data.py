"""Dataset registry with deterministic train/val/test splits, held in memory as tensors.

Datasets
--------
``digits``
    scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes). Fully offline: the
    default everywhere. Images are resized (bilinear) to ``image_size``.
``cifar10``
    CIFAR-10 through torchvision, stored in ``data/cifar10/``. Downloaded when online; offline and
    absent, :class:`DatasetUnavailableError` says which file to put where.
``imagefolder:<path>``
    Your own images in ``<path>/<class_name>/*.png|jpg`` (torchvision's ImageFolder layout).

All splits are stratified and depend only on ``seed``; pixel values are standardised with the
training split's per-channel mean and std, so no statistic leaks from validation or test data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from npas_lab import paths

__all__ = [
    "DATASETS",
    "DataSplits",
    "DatasetUnavailableError",
    "list_datasets",
    "load_dataset",
]

# digits: 1797 images, 10 classes, values 0..16 (golden statistics, asserted in tests).
DIGITS_NUM_IMAGES = 1797


class DatasetUnavailableError(RuntimeError):
    """A dataset is not on disk and could not be fetched (offline, or a bad path)."""


@dataclass(frozen=True)
class DataSplits:
    """Train/validation/test splits of one dataset, as in-memory tensors.

    Attributes
    ----------
    name
        Registry name the splits were loaded with.
    train, val, test
        ``TensorDataset`` of ``(images float32 NxCxHxW, labels int64 N)``.
    num_classes, in_channels, image_size
        What a model for these splits must accept and predict.
    classes
        Class names in label order.
    """

    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    in_channels: int
    image_size: int
    classes: tuple[str, ...] = field(default=())

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Shape of a batch of one image, ``(1, C, H, W)``: what compilers are given."""
        return (1, self.in_channels, self.image_size, self.image_size)

    def loader(self, split: str, *, batch_size: int = 64, seed: int = 0) -> DataLoader:
        """Return a DataLoader over ``split`` (shuffled, seeded, for ``"train"`` only)."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split={split!r} is not one of 'train', 'val', 'test'")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        dataset = getattr(self, split)
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=split == "train", generator=generator
        )

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """Return the first ``batch`` test images (what compile and measure are given)."""
        return self.test.tensors[0][:batch].clone()


def _resize(images: torch.Tensor, image_size: int, in_channels: int) -> torch.Tensor:
    """Resize NxCxHxW to ``image_size`` and map to ``in_channels`` (grey <-> RGB)."""
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        images = F.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
    channels = images.shape[1]
    if channels == in_channels:
        return images
    if channels == 1:
        return images.expand(-1, in_channels, -1, -1).contiguous()
    if in_channels == 1:
        # ITU-R 601 luma, what PIL's convert("L") uses.
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
        return (images[:, :3] * weights).sum(dim=1, keepdim=True)
    raise ValueError(f"cannot map {channels}-channel images to in_channels={in_channels}")


def _split(
    labels: np.ndarray, *, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return stratified index arrays (train, val, test) that depend only on ``seed``."""
    index = np.arange(len(labels))
    rest, test = train_test_split(
        index, test_size=test_fraction, random_state=seed, stratify=labels
    )
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(
        rest, test_size=val_share, random_state=seed + 1, stratify=labels[rest]
    )
    return np.sort(train), np.sort(val), np.sort(test)


def _finish(
    name: str,
    images: torch.Tensor,
    labels: np.ndarray,
    classes: tuple[str, ...],
    *,
    image_size: int,
    in_channels: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> DataSplits:
    images = _resize(images.float(), image_size, in_channels)
    train, val, test = _split(
        labels, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )
    # Standardise with training statistics only.
    mean = images[train].mean(dim=(0, 2, 3), keepdim=True)
    std = images[train].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    images = (images - mean) / std
    targets = torch.as_tensor(labels, dtype=torch.int64)
    make = lambda idx: TensorDataset(images[idx].contiguous(), targets[idx].contiguous())  # noqa: E731
    return DataSplits(
        name=name,
        train=make(train),
        val=make(val),
        test=make(test),
        num_classes=len(classes),
        in_channels=in_channels,
        image_size=image_size,
        classes=classes,
    )


def _load_digits(**kwargs) -> DataSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    classes = tuple(str(c) for c in bunch.target_names)
    return _finish("digits", images, np.asarray(bunch.target), classes, **kwargs)


def _load_cifar10(*, download: bool | None = None, **kwargs) -> DataSplits:
    from torchvision.datasets import CIFAR10

    root = paths.data_dir() / "cifar10"
    present = (root / "cifar-10-batches-py").is_dir()
    if download is None:
        download = os.environ.get("NPAS_LAB_OFFLINE", "") not in ("1", "true", "yes")
    where = (
        f"download 'cifar-10-python.tar.gz' (https://www.cs.toronto.edu/~kriz/cifar.html) "
        f"on a connected machine and put it, or its extracted 'cifar-10-batches-py' folder, "
        f"in {root}"
    )
    if not present and not download:
        raise DatasetUnavailableError(f"cifar10 is not in {root} and downloads are off; {where}")
    try:
        parts = [
            CIFAR10(root=str(root), train=train, download=download and not present)
            for train in (True, False)
        ]
    except Exception as err:  # torchvision raises URLError, OSError or RuntimeError here
        raise DatasetUnavailableError(
            f"cifar10 could not be loaded or downloaded ({type(err).__name__}: {err}); {where}"
        ) from err
    images = torch.cat([torch.as_tensor(p.data).permute(0, 3, 1, 2) for p in parts]) / 255.0
    labels = np.concatenate([np.asarray(p.targets) for p in parts])
    return _finish("cifar10", images, labels, tuple(parts[0].classes), **kwargs)


def _load_imagefolder(path: str, **kwargs) -> DataSplits:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DatasetUnavailableError(
            f"imagefolder: {folder} is not a folder; expected <folder>/<class_name>/<image files>"
        )
    size = kwargs["image_size"]
    try:
        dataset = ImageFolder(str(folder), loader=lambda p: _open_rgb(p, size))
    except (FileNotFoundError, RuntimeError) as err:
        raise DatasetUnavailableError(f"imagefolder: {folder}: {err}") from err
    images = torch.stack([pil_to_tensor(img) for img, _ in dataset]).float() / 255.0
    labels = np.asarray(dataset.targets)
    return _finish(f"imagefolder:{folder}", images, labels, tuple(dataset.classes), **kwargs)


def _open_rgb(path: str, size: int):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB").resize((size, size), Image.BILINEAR)


#: Registry: name -> loader. ``imagefolder:<path>`` is matched by prefix.
DATASETS: dict[str, Callable[..., DataSplits]] = {
    "digits": _load_digits,
    "cifar10": _load_cifar10,
    "imagefolder": _load_imagefolder,
}


def list_datasets() -> list[str]:
    """Return the registered dataset names (``imagefolder`` takes ``:<path>``)."""
    return ["digits", "cifar10", "imagefolder:<path>"]


def load_dataset(
    name: str = "digits",
    *,
    image_size: int = 16,
    in_channels: int = 1,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    download: bool | None = None,
) -> DataSplits:
    """Load a registered dataset as deterministic, standardised in-memory splits.

    Parameters
    ----------
    name
        ``"digits"`` (default, offline), ``"cifar10"`` or ``"imagefolder:<path>"``.
    image_size
        Square side the images are resized to (digits are 8x8 natively).
    in_channels
        1 (grey) or 3 (RGB); grey images are repeated, RGB converted to luma.
    val_fraction, test_fraction
        Shares of the whole dataset held out, stratified by class.
    seed
        Decides the split; the same seed gives the same split on every machine.
    download
        CIFAR-10 only: allow a download (default: yes unless ``NPAS_LAB_OFFLINE=1``).

    Returns
    -------
    DataSplits

    Examples
    --------
    >>> splits = load_dataset("digits", image_size=16)
    >>> len(splits.train) + len(splits.val) + len(splits.test)
    1797
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    if not isinstance(image_size, int) or image_size < 4:
        raise ValueError(f"image_size={image_size!r} must be an integer >= 4")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels={in_channels!r} must be 1 (grey) or 3 (RGB)")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must each be in "
            "(0, 1) and sum to less than 1"
        )
    options = dict(
        image_size=image_size,
        in_channels=in_channels,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
    if name.startswith("imagefolder:"):
        return _load_imagefolder(name.split(":", 1)[1], **options)
    if name == "cifar10":
        return _load_cifar10(download=download, **options)
    if name not in DATASETS or name == "imagefolder":
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(list_datasets())}")
    return DATASETS[name](**options)
