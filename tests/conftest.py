"""Shared fixtures: every test gets its own results/data home, and no test reaches the network."""

from __future__ import annotations

import socket

import pytest
import torch
from torch import nn

from npas_lab.models import create_model


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Point NPAS_LAB_HOME at a temporary folder so tests never touch the repo's results/."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("NPAS_LAB_HOME", str(home))
    return home


@pytest.fixture
def no_network(monkeypatch):
    """Refuse connections to anything but loopback, as on an offline machine."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")):
            return real_connect(self, address)
        raise OSError(f"network is unreachable (test is offline): {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded)


def calibrated_model(name: str, input_size: int = 32) -> nn.Module:
    """Return registry model ``name`` in eval mode with batch-norm statistics of real activations.

    Freshly initialised MobileNet/EfficientNet in eval mode shrink activations layer by layer
    (running variance 1 against much smaller activations): their logits are ~1e-13 and any
    absolute tolerance would pass. Cumulative statistics from two random batches give O(1)
    outputs, so a 1e-4 comparison means something.
    """
    torch.manual_seed(0)
    model = create_model(name, input_size=input_size)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, input_size, input_size))
    return model.eval()


@pytest.fixture(scope="session")
def calibrated():
    """:func:`calibrated_model`, for tests (conftest is not meant to be imported)."""
    return calibrated_model
