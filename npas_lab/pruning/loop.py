"""The training loop every pruning algorithm drives: one optimizer, one schedule, step hooks.

:func:`npas_lab.training.fit` trains a model for a number of epochs; pruning algorithms need more
than that from the loop: a regulariser added to the loss (ADMM, group Lasso), something done
before given steps (mask updates, Z/U updates, the hard prune), and optimizer state that forgets
the weights a new mask removes. :class:`Trainer` is that loop. Like ``fit`` it uses AdamW (or
SGD with Nesterov momentum) and one one-cycle learning-rate schedule, here over the *whole*
pruning run, so every algorithm gets the same learning-rate curve and the same number of steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from npas_lab.data import DataSplits
from npas_lab.sparsity import get_masks
from npas_lab.training import seed_everything

__all__ = ["TrainSettings", "Trainer"]

_OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """How a pruning run trains (what :func:`npas_lab.training.fit` calls the schedule)."""

    epochs: int = 4  # the whole run: regularised / ramp phase and masked retraining together
    lr: float = 1e-3  # peak of the one-cycle schedule; lower than training from scratch
    batch_size: int = 64
    optimizer: str = "adamw"  # "adamw" or "sgd" (momentum 0.9, nesterov)
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    seed: int = 0  # seeds the shuffling and any dropout

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs={self.epochs!r} must be an int >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} must be > 0")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is not one of {', '.join(_OPTIMIZERS)}")


class Trainer:
    """Train a model epoch by epoch with hooks; the algorithms of :mod:`.algorithms` drive it.

    Parameters
    ----------
    model
        Trained in place. Masks installed later (``apply_plan``) keep the same parameter objects
        (torch parametrizations wrap them), so the optimizer built here keeps working.
    data
        Only the training split is read.
    settings
        Epochs, learning rate, optimizer, seed.
    progress, desc
        A tqdm bar over all steps of the run.

    Attributes
    ----------
    steps_per_epoch, total_steps
        Optimizer steps per epoch and in the whole run.
    step, epoch
        Steps and epochs done so far.
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataSplits,
        settings: TrainSettings,
        *,
        progress: bool = True,
        desc: str = "prune",
    ) -> None:
        self.model, self.settings = model, settings
        generator = seed_everything(settings.seed)
        self.loader = torch.utils.data.DataLoader(
            data.train, batch_size=settings.batch_size, shuffle=True, generator=generator
        )
        self.steps_per_epoch = len(self.loader)
        self.total_steps = settings.epochs * self.steps_per_epoch
        params = [p for p in model.parameters() if p.requires_grad]
        if settings.optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                params, lr=settings.lr, weight_decay=settings.weight_decay
            )
        else:
            self.optimizer = torch.optim.SGD(
                params,
                lr=settings.lr,
                momentum=0.9,
                nesterov=True,
                weight_decay=settings.weight_decay,
            )
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=settings.lr, total_steps=self.total_steps
        )
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
        self.step, self.epoch = 0, 0
        self.bar = tqdm(total=self.total_steps, desc=desc, disable=not progress, leave=False)

    def epoch_steps(self) -> range:
        """Return the global step indices of the next epoch."""
        return range(self.step, self.step + self.steps_per_epoch)

    def train_epoch(
        self,
        *,
        before_step: Callable[[int], None] | None = None,
        penalty: Callable[[int], torch.Tensor | None] | None = None,
    ) -> dict[str, float]:
        """Run one epoch; return its mean train loss and accuracy (and penalty, if any).

        Parameters
        ----------
        before_step
            Called with the global step index before each step's forward pass (mask and Z/U
            updates, the hard prune). Call :meth:`masks_changed` from it after changing masks.
        penalty
            Called with the global step index; a scalar tensor returned is added to the loss.
            ``train_loss`` reports the cross-entropy alone, so algorithms compare fairly.
        """
        if self.epoch >= self.settings.epochs:
            raise RuntimeError(f"the run has {self.settings.epochs} epochs, all done")
        self.model.train()
        start = time.perf_counter()
        loss_sum, reg_sum, correct, count, reg_steps = 0.0, 0.0, 0, 0, 0
        for images, labels in self.loader:
            if before_step is not None:
                before_step(self.step)
                self.model.train()  # a hook may have evaluated the model
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.model(images)
            loss = self.loss_fn(logits, labels)
            extra = penalty(self.step) if penalty is not None else None
            total = loss if extra is None else loss + extra
            total.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.item() * labels.numel()
            correct += (logits.argmax(dim=1) == labels).sum().item()
            count += labels.numel()
            if extra is not None:
                reg_sum, reg_steps = reg_sum + extra.item(), reg_steps + 1
            self.step += 1
            self.bar.update(1)
        self.epoch += 1
        stats = {
            "train_loss": loss_sum / count,
            "train_accuracy": correct / count,
            "train_seconds": time.perf_counter() - start,
        }
        if reg_steps:
            stats["penalty"] = reg_sum / reg_steps
        return stats

    @torch.no_grad()
    def masks_changed(self) -> None:
        """Zero the stored weights and the optimizer state wherever a mask prunes.

        Needed after installing or changing masks: Adam's running averages (or SGD's momentum)
        would otherwise keep moving a pruned weight's stored value. The masked weight stays 0
        either way, but a later mask update that scores stored values would revive it.
        """
        for name, mask in get_masks(self.model).items():
            original = self.model.get_submodule(name).parametrizations.weight.original
            original.mul_(mask)
            for value in self.optimizer.state.get(original, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                    value.mul_(mask)

    def close(self) -> None:
        """Close the progress bar."""
        self.bar.close()
