"""Cross-compilation: real aarch64 libraries from registry models, and clear toolchain errors."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest
import torch

from npas_lab.compiler import CompiledModel
from npas_lab.devices import (
    ToolchainError,
    check_toolchain,
    compile_for_device,
    elf_machine,
    export_for_device,
    get_device,
)
from npas_lab.models import create_model

SHAPE = (1, 3, 16, 16)
GNU = "aarch64-linux-gnu-gcc"
needs_gnu = pytest.mark.skipif(
    shutil.which(GNU) is None, reason=f"{GNU} not installed (make installs it as root)"
)


@pytest.fixture(scope="module")
def android_model() -> CompiledModel:
    if shutil.which(GNU) is None:
        pytest.skip(f"{GNU} not installed")
    torch.manual_seed(0)
    model = create_model("small_cnn").eval()
    return compile_for_device(model, torch.randn(SHAPE), "android-arm64", name="small_cnn")


def _readelf_needed(path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True).stdout
    return [line.split("[")[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


@needs_gnu
def test_android_build_is_an_aarch64_library_with_template_kernels(android_model, tmp_path):
    assert android_model.target["mtriple"] == "aarch64-linux-android"
    # kernels="auto": the project's conv templates are target-independent TIR, built for aarch64
    assert android_model.kernels["kernel"].str.contains("template").all()
    chain = check_toolchain("android-arm64")
    assert (chain.kind, chain.command) == ("gnu", GNU)
    lib = export_for_device(android_model, tmp_path / "small_cnn.so")
    assert elf_machine(lib) == "AArch64"
    assert "libc.so.6" not in _readelf_needed(lib)  # glibc is not on a phone


@needs_gnu
def test_linux_board_library_is_aarch64_and_links_glibc(tmp_path):
    model = create_model("small_cnn").eval()
    compiled = compile_for_device(model, torch.randn(SHAPE), "linux-arm64", kernels="tvm")
    lib = export_for_device(compiled, tmp_path / "board.so")
    assert elf_machine(lib) == "AArch64"
    assert "libc.so.6" in _readelf_needed(lib)


def test_host_library_is_for_this_machine(tmp_path):
    model = create_model("small_cnn").eval()
    compiled = compile_for_device(model, torch.randn(SHAPE), "host-cpu", kernels="tvm")
    assert check_toolchain("host-cpu").kind == "host"
    assert elf_machine(export_for_device(compiled, tmp_path / "h.so")) == "x86-64"


@needs_gnu
def test_ndk_compiler_is_used_when_tvm_ndk_cc_is_set(android_model, tmp_path, monkeypatch):
    # No NDK here: a stand-in for its clang logs how TVM's NDK helper calls it, then links with
    # Debian's aarch64 gcc (dropping -lm: Debian's cross libm has no link-time .so here).
    log = tmp_path / "ndk.log"
    fake = tmp_path / "aarch64-linux-android28-clang"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        'args=""; for a in "$@"; do [ "$a" = "-lm" ] || args="$args $a"; done\n'
        f"exec {GNU} -nostdlib $args -lgcc\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("TVM_NDK_CC", str(fake))
    chain = check_toolchain("android-arm64")
    assert (chain.kind, chain.command) == ("ndk", str(fake))
    lib = export_for_device(android_model, tmp_path / "ndk.so")
    assert elf_machine(lib) == "AArch64"
    call = log.read_text()
    assert "-shared -fPIC -lm" in call and f"-o {lib}" in call
    # Boards are not Android: the NDK is not used for them.
    assert check_toolchain("linux-arm64").kind == "gnu"


def test_tvm_ndk_cc_pointing_nowhere_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TVM_NDK_CC", str(tmp_path / "no-such-clang"))
    with pytest.raises(ToolchainError, match=r"TVM_NDK_CC=.* is not an executable"):
        check_toolchain("android-arm64")


@pytest.mark.parametrize("device", ["android-arm64", "android-opencl", "linux-arm64"])
def test_without_any_cross_compiler_the_error_says_what_to_install(device, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing installed
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    with pytest.raises(ToolchainError, match="apt-get install gcc-aarch64-linux-gnu") as err:
        compile_for_device(create_model("small_cnn"), torch.randn(SHAPE), device)
    assert f"device {device!r}" in str(err.value)
    if device.startswith("android"):
        assert "TVM_NDK_CC" in str(err.value) and "Android NDK" in str(err.value)


def test_cuda_without_its_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin")  # no nvcc
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("TVM_CUDA_COMPILE_MODE", "nvcc")
    with pytest.raises(ToolchainError, match=r"nvcc is not on PATH.*install the CUDA toolkit"):
        compile_for_device(create_model("small_cnn"), torch.randn(SHAPE), "cuda")
    assert get_device("cuda").target["kind"] == "cuda"


def test_elf_machine_refuses_other_files(tmp_path):
    path = tmp_path / "x.so"
    path.write_bytes(b"not an elf")
    with pytest.raises(ValueError, match="is not an ELF file"):
        elf_machine(path)
