"""The npas-lab command: user errors are one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys

from npas_lab import cli


def test_lists_registries(capsys):
    assert cli.main(["models"]) == 0
    assert "small_cnn" in capsys.readouterr().out.split()
    assert cli.main(["datasets"]) == 0
    assert "digits" in capsys.readouterr().out.split()
    assert cli.main(["devices"]) == 0
    assert "host-cpu" in capsys.readouterr().out.split()


def test_unknown_model_is_one_line_and_status_2(capsys):
    assert cli.main(["train", "--model", "vgg99", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npas-lab train: error:") and "vgg99" in err and "small_cnn" in err
    assert "Traceback" not in err


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "npas_lab.cli", "datasets"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "cifar10" in out
