"""Repository-anchored locations of data and results.

Paths never depend on the current working directory: notebooks run from ``notebooks/``, the CLI
from anywhere, and both must see the same ``results/``. ``NPAS_LAB_HOME`` moves both folders
(tests point it at a temporary directory).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_DIR", "REPO_ROOT", "RESULTS_DIR", "data_dir", "home", "results_dir"]

#: The checkout this package lives in (``npas_lab/..``).
REPO_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    """Return the folder holding ``data/`` and ``results/`` (``$NPAS_LAB_HOME`` or the repo)."""
    env = os.environ.get("NPAS_LAB_HOME")
    return Path(env).expanduser().resolve() if env else REPO_ROOT


def data_dir() -> Path:
    """Return the dataset folder, created on first use."""
    path = home() / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> Path:
    """Return the results folder, created on first use."""
    path = home() / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


# Module-level constants for reading; call the functions when NPAS_LAB_HOME may change at run time.
DATA_DIR = REPO_ROOT / "data"
RESULTS_DIR = REPO_ROOT / "results"
