"""Shared fixtures: every test gets its own results/data home, and no test reaches the network."""

from __future__ import annotations

import socket

import pytest


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
