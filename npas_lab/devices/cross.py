"""Cross-compilation for a device: which toolchain links its library, and a clear error if none.

A device library is TVM's generated objects (``lib0.o`` with the kernels and the VM glue,
``devc.o`` with the packed imports and weights), linked into one shared object by a C driver for
the device's triple. :func:`check_toolchain` picks that driver from the profile:

=====================  ==========================================================================
target                 linker (first one found)
=====================  ==========================================================================
host CPU (no triple)   the host compiler (``$CXX``/``$CC``, else ``g++``), as TVM does
``*-linux-android``    ``$TVM_NDK_CC`` (the NDK's ``aarch64-linux-android<API>-clang``, through
                       TVM's ``tvm.support.ndk.create_shared``), else the profile's
                       ``cross_compiler`` (Debian's ``aarch64-linux-gnu-gcc``)
other triples          the profile's ``cross_compiler`` (e.g. ``aarch64-linux-gnu-gcc``)
=====================  ==========================================================================

CUDA targets also need a CUDA compiler for their kernels: NVRTC (Python package
``cuda-bindings``, TVM's default) or ``nvcc`` when ``TVM_CUDA_COMPILE_MODE=nvcc``. OpenCL kernels
are compiled by the phone's driver, so only the host part needs a linker.

Debian's ``gcc-aarch64-linux-gnu`` without ``libc6-dev-arm64-cross`` has no start files
(``crti.o``): a plain ``-shared`` link then fails. A TVM library needs no start files (it is
``dlopen``-ed by the TVM runtime, which already links the C library), so the link then uses
``-nostdlib`` with ``libgcc`` for compiler builtins, and for Linux targets names the cross
``libc.so.6``/``libm.so.6`` so the library still records them as dependencies. For a phone the NDK
is the reference linker; the Debian link is for building and checking without it.

Examples
--------
>>> chain = check_toolchain("android-arm64")  # doctest: +SKIP
>>> chain.kind, chain.command  # doctest: +SKIP
('gnu', 'aarch64-linux-gnu-gcc')
>>> lib = export_for_device(compile_for_device(model, x, "android-arm64"), "m.so")  # doctest: +SKIP
>>> elf_machine(lib)  # doctest: +SKIP
'AArch64'
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from npas_lab.devices.profiles import DeviceProfile, get_device

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

    from npas_lab.compiler import CompiledModel

__all__ = [
    "Toolchain",
    "ToolchainError",
    "check_toolchain",
    "compile_for_device",
    "device_table",
    "elf_machine",
    "export_for_device",
    "library_compiler",
]

NDK_ENV = "TVM_NDK_CC"

# What to install, by missing piece: printed in ToolchainError so the fix is one command away.
_INSTALL_GNU = (
    "install Debian's cross compiler (`sudo apt-get install gcc-aarch64-linux-gnu`, which "
    "`make` does when run as root)"
)
_INSTALL_NDK = (
    "or, for a phone, install the Android NDK and set TVM_NDK_CC to its clang, e.g. "
    "$ANDROID_NDK_HOME/toolchains/llvm/prebuilt/linux-x86_64/bin/aarch64-linux-android28-clang"
)


class ToolchainError(FileNotFoundError):
    """The compiler or linker a device needs is not installed; the message says what to install."""


@dataclass(frozen=True)
class Toolchain:
    """How a device's library is built.

    Attributes
    ----------
    kind : {"host", "ndk", "gnu"}
        ``host``: the host compiler; ``ndk``: ``$TVM_NDK_CC`` via TVM's NDK helper; ``gnu``: a
        GCC-style cross driver.
    command : str
        The compiler driver that links (a name on ``PATH`` or a path).
    options : tuple of str
        Extra link options, before the objects (the start-file workaround, see the module
        docstring).
    libraries : tuple of str
        Libraries linked after the objects (the order matters to ``ld --as-needed`` and to
        static archives such as ``-lgcc``).
    kernels : str or None
        The device-kernel compiler, for CUDA (``"nvrtc"`` or ``"nvcc"``).
    """

    kind: str
    command: str
    options: tuple[str, ...] = ()
    libraries: tuple[str, ...] = ()
    kernels: str | None = None


def _which(command: str) -> str | None:
    if os.path.isfile(command) and os.access(command, os.X_OK):
        return command
    return shutil.which(command)


def _triple(profile: DeviceProfile) -> str | None:
    llvm = profile.host if profile.host is not None else profile.target
    triple = llvm.get("mtriple")
    return str(triple) if triple else None


@functools.cache
def _print_file_name(command: str, name: str) -> str | None:
    # `gcc -print-file-name=X` echoes X back when its search path has no such file.
    out = subprocess.run(
        [command, f"-print-file-name={name}"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return out if out and out != name and os.path.exists(out) else None


def _gnu_options(command: str, triple: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return (options, libraries) for a GCC-style cross driver."""
    if _print_file_name(command, "crti.o"):
        return (), ()  # a complete sysroot: the plain `-shared` link works
    libraries = []
    if "android" not in triple:  # bionic has no libc.so.6: Android libraries rely on the app's
        for name in ("libc.so.6", "libm.so.6"):
            lib = _print_file_name(command, name)
            libraries += [lib] if lib else []
    return ("-nostdlib",), (*libraries, "-lgcc")


def _cuda_kernels(profile: DeviceProfile) -> str:
    mode = os.environ.get("TVM_CUDA_COMPILE_MODE", "nvrtc").lower()
    if mode == "nvcc":
        if os.environ.get("CUDA_PATH") or shutil.which("nvcc"):
            return "nvcc"
        raise ToolchainError(
            f"device {profile.name!r} compiles CUDA kernels with nvcc "
            "(TVM_CUDA_COMPILE_MODE=nvcc) but nvcc is not on PATH and CUDA_PATH is not set; "
            "install the CUDA toolkit (https://developer.nvidia.com/cuda-downloads) or unset "
            "TVM_CUDA_COMPILE_MODE to use NVRTC (pip install cuda-bindings)"
        )
    if importlib.util.find_spec("cuda") is None or not importlib.util.find_spec("cuda.bindings"):
        raise ToolchainError(
            f"device {profile.name!r} compiles CUDA kernels with NVRTC, which needs the "
            "`cuda-bindings` package: pip install cuda-bindings (or install the CUDA toolkit and "
            "set TVM_CUDA_COMPILE_MODE=nvcc)"
        )
    return "nvrtc"


def check_toolchain(device: str | DeviceProfile) -> Toolchain:
    """Return the toolchain that builds libraries for ``device``, or say what to install.

    Parameters
    ----------
    device : str or DeviceProfile

    Returns
    -------
    Toolchain

    Raises
    ------
    ToolchainError
        If no linker for the device's triple (or no CUDA kernel compiler) is installed; the
        message names the device and the package or variable that fixes it.
    """
    profile = get_device(device)
    kernels = _cuda_kernels(profile) if profile.target.get("kind") == "cuda" else None
    triple = _triple(profile)
    if triple is None and profile.cross_compiler is None:
        from tvm.support import cc

        host = os.environ.get("CXX") or os.environ.get("CC") or cc.get_cc() or "g++"
        if not _which(host):
            raise ToolchainError(
                f"device {profile.name!r} links with the host compiler {host!r}, which is not "
                "installed: sudo apt-get install g++"
            )
        return Toolchain("host", host, kernels=kernels)
    if triple and "android" in triple and os.environ.get(NDK_ENV):
        ndk = os.environ[NDK_ENV]
        if not _which(ndk):
            raise ToolchainError(
                f"{NDK_ENV}={ndk!r} is not an executable: point it at the NDK's clang "
                "(toolchains/llvm/prebuilt/linux-x86_64/bin/aarch64-linux-android28-clang)"
            )
        return Toolchain("ndk", ndk, kernels=kernels)
    command = profile.cross_compiler
    if command is None or not _which(command):
        missing = f"cross compiler {command!r} is not installed" if command else "no cross_compiler"
        if triple and "android" in triple:
            hint = f"{_INSTALL_GNU}, {_INSTALL_NDK}"
        else:
            hint = f"{_INSTALL_GNU}, or set cross_compiler in the profile to a driver for {triple}"
        raise ToolchainError(
            f"device {profile.name!r} (target triple {triple}) needs a linker for its library: "
            f"{missing} and {NDK_ENV} is not set; {hint}"
        )
    options, libraries = _gnu_options(command, triple or "")
    return Toolchain("gnu", command, options, libraries, kernels=kernels)


def library_compiler(device: str | DeviceProfile) -> Callable[..., Any] | None:
    """Return the ``fcompile`` for ``export_library`` (None: TVM's default host link).

    Raises
    ------
    ToolchainError
        As :func:`check_toolchain`.
    """
    chain = check_toolchain(device)
    from tvm.support import cc

    if chain.kind == "host":
        return None
    if chain.kind == "ndk":
        from tvm.support import ndk

        return ndk.create_shared  # TVM's own NDK path: `$TVM_NDK_CC -shared -fPIC -lm`
    return cc.cross_compiler(
        chain.command, options=list(chain.options), add_files=list(chain.libraries)
    )


_EXPORT_LOCK = threading.Lock()


def export_for_device(compiled: CompiledModel, path: str | Path) -> Path:
    """Write ``compiled``'s library for its device to ``path`` (``.so``) and return the path.

    Unlike :meth:`CompiledModel.export_library`, the linker comes from :func:`check_toolchain`
    (the NDK when ``$TVM_NDK_CC`` is set, the start-file workaround for Debian's cross gcc).

    Raises
    ------
    ToolchainError
        If the device's toolchain is missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fcompile = library_compiler(compiled.profile)
    # TVM's export is not thread safe: two threads exporting one executable at once (e.g.
    # measure_many on several servers) abort the process in write_to_file. One at a time.
    with _EXPORT_LOCK:
        compiled.executable.export_library(str(path), fcompile=fcompile)
    return path


def compile_for_device(
    model: nn.Module, example_input: torch.Tensor, device: str | DeviceProfile, **options: Any
) -> CompiledModel:
    """Check the device's toolchain, then :func:`~npas_lab.compiler.compile_model` for it.

    Checking first turns a missing cross linker or CUDA compiler into a one-line
    :class:`ToolchainError` before minutes of export and build, instead of a linker trace at
    the end.

    Parameters
    ----------
    model, example_input
        As :func:`~npas_lab.compiler.compile_model`.
    device : str or DeviceProfile
    **options
        Keyword options of :func:`~npas_lab.compiler.compile_model` (``plan``, ``kernels``,
        ``name``, ...).

    Raises
    ------
    ToolchainError
        If the device's toolchain is missing.
    """
    from npas_lab.compiler import compile_model

    profile = get_device(device)
    check_toolchain(profile)
    return compile_model(model, example_input, profile, **options)


def device_table() -> pd.DataFrame:
    """Return one row per device profile: target, how it is reached, and whether it can be built.

    Columns: ``device``, ``target`` (kind and triple), ``reach``, ``tracker``, ``key``,
    ``threads``, ``toolchain`` (the linker that would be used, or ``missing: <what to install>``)
    and ``description``.
    """
    import pandas as pd

    from npas_lab.devices.profiles import list_devices

    rows = []
    for name in list_devices():
        profile = get_device(name)
        try:
            chain = check_toolchain(profile)
            toolchain = f"{chain.kind}: {chain.command}" + (
                f" + {chain.kernels}" if chain.kernels else ""
            )
        except ToolchainError as err:
            toolchain = f"missing: {err}"
        triple = _triple(profile)
        rows.append(
            {
                "device": name,
                "target": f"{profile.target['kind']}" + (f" ({triple})" if triple else ""),
                "reach": profile.reach,
                "tracker": profile.tracker,
                "key": profile.key,
                "threads": profile.num_threads,
                "toolchain": toolchain,
                "description": profile.description,
            }
        )
    return pd.DataFrame(rows)


#: ELF ``e_machine`` values of the architectures a device library can have.
_ELF_MACHINES = {3: "x86", 40: "ARM", 62: "x86-64", 183: "AArch64", 243: "RISC-V"}


def elf_machine(path: str | Path) -> str:
    """Return the architecture an ELF file is built for (``"AArch64"``, ``"x86-64"``, ...).

    Raises
    ------
    ValueError
        If ``path`` is not an ELF file.
    """
    header = Path(path).read_bytes()[:20]
    if header[:4] != b"\x7fELF":
        raise ValueError(f"{path} is not an ELF file")
    order = "little" if header[5] == 1 else "big"
    machine = int.from_bytes(header[18:20], order)
    return _ELF_MACHINES.get(machine, f"e_machine {machine}")
