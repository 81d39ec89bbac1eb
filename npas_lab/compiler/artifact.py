"""Compiled artifacts on disk: a model's library plus everything needed to run and trace it.

Layout::

    results/artifacts/<key>/
        model.so          the compiled library, weights included (TVM ``export_library``)
        metadata.json     model name, input spec, device profile and target, build options,
                          tuning summary, pruning plan (if given), timings, environment
                          (package versions, git commit)

``key`` defaults to ``<model name>-<12 hex digits>``, a hash of what produced the library: the
imported Relax module (architecture and weights, structurally), the target, the input spec, the
build options and the plan. The same model compiled the same way gets the same folder.

:func:`load_artifact` gives back a :class:`LoadedModel`, a
:class:`~npas_lab.compiler.CompiledModel` whose executable is the loaded library: callable in
process, measurable with :func:`npas_lab.devices.measure`, uploadable over RPC; nothing is
recompiled.

Examples
--------
>>> path = save_artifact(compiled, plan=plan)  # doctest: +SKIP
>>> again = load_artifact(path.name)  # by key, or by path
>>> again(x)  # equals compiled(x)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import tvm
import tvm_ffi

from npas_lab import paths
from npas_lab.compiler.build import CompiledModel

__all__ = ["LIBRARY", "METADATA", "LoadedModel", "artifact_key", "load_artifact", "save_artifact"]

LIBRARY = "model.so"
METADATA = "metadata.json"
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
FORMAT = 1


def _artifacts_root() -> Path:
    return paths.results_dir() / "artifacts"


def _plan_data(plan: Any) -> Any:
    if plan is None:
        return None
    if hasattr(plan, "to_dict"):
        return plan.to_dict()
    if hasattr(plan, "to_json"):
        return json.loads(plan.to_json())
    if isinstance(plan, Mapping):
        return dict(plan)
    raise TypeError(f"plan must be a PruningPlan or a JSON dict, got {type(plan).__name__}")


def artifact_key(compiled: CompiledModel, *, plan: Any = None) -> str:
    """Return the default artifact key of ``compiled``: ``<name>-<hash of what produced it>``."""
    digest = hashlib.sha256()
    if compiled.mod is not None:
        digest.update(f"{tvm_ffi.structural_hash(compiled.mod):x}".encode())
    spec = {
        "target": compiled.target,
        "input_shape": list(compiled.input_shape),
        "input_dtype": str(compiled.input_dtype),
        "options": compiled.options,
        "plan": _plan_data(plan),
    }
    digest.update(json.dumps(spec, sort_keys=True, default=str).encode())
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", compiled.name).strip("._") or "model"
    return f"{safe}-{digest.hexdigest()[:12]}"


def save_artifact(
    compiled: CompiledModel,
    *,
    plan: Any = None,
    key: str | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``compiled``'s library and metadata to ``results/artifacts/<key>/``; return the folder.

    Parameters
    ----------
    compiled : CompiledModel
    plan : PruningPlan or dict, optional
        The pruning plan the model was built from (stored as JSON, part of the key); default
        the plan ``compiled`` was built with.
    key : str, optional
        Folder name; default :func:`artifact_key`.
    extra : mapping, optional
        More JSON-able metadata (e.g. accuracy).
    overwrite : bool
        Replace an existing artifact of the same key (else raise ``FileExistsError``).

    Returns
    -------
    Path
        The artifact folder. The library is written to a temporary folder first and moved in,
        so a crash never leaves a half-written artifact.
    """
    from npas_lab import results

    if plan is None:
        plan = getattr(compiled, "plan", None)
    key = key or artifact_key(compiled, plan=plan)
    if not _KEY.match(key):
        raise ValueError(f"artifact key {key!r}: use letters, digits, '_', '-', '.'")
    root = _artifacts_root()
    final = root / key
    if final.exists() and not overwrite:
        raise FileExistsError(f"artifact {key!r} exists at {final}")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        compiled.export_library(tmp / LIBRARY)
        metadata = {
            "format": FORMAT,
            "key": key,
            "name": compiled.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "input_shape": list(compiled.input_shape),
            "input_dtype": str(compiled.input_dtype).removeprefix("torch."),
            "device": compiled.profile.to_dict(),
            "target": compiled.target,
            "options": compiled.options,
            "tuning": compiled.tuning.to_dict() if compiled.tuning is not None else None,
            "plan": _plan_data(plan),
            "timings": compiled.timings,
            "environment": results.environment(),
            "extra": dict(extra or {}),
        }
        (tmp / METADATA).write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


class LoadedModel(CompiledModel):
    """A compiled model loaded from an artifact folder (no Relax module: nothing to rebuild).

    Attributes
    ----------
    path : Path
        The artifact folder.
    metadata : dict
        Its ``metadata.json``.
    """

    def __init__(self, path: Path, metadata: Mapping[str, Any], library: tvm.runtime.Module):
        from npas_lab.devices.profiles import DeviceProfile  # devices/ imports compiler/

        super().__init__(
            name=metadata["name"],
            profile=DeviceProfile.from_dict(metadata["device"]),
            target=metadata["target"],
            executable=library,
            mod=None,
            input_shape=tuple(metadata["input_shape"]),
            input_dtype=getattr(torch, metadata["input_dtype"]),
            timings=metadata.get("timings", {}),
            options=metadata.get("options", {}),
        )
        self.path = path
        self.metadata = dict(metadata)

    def __repr__(self) -> str:
        return f"LoadedModel(key={self.path.name!r}, name={self.name!r}, device={self.device!r})"

    def export_library(self, path: str | Path) -> Path:
        """Copy the artifact's library to ``path`` (it is already linked for its device)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path / LIBRARY, path)
        return path


def load_artifact(path_or_key: str | Path) -> LoadedModel:
    """Load an artifact folder (a path, or a key under ``results/artifacts/``).

    The library must be loadable here (built for this machine's CPU, or linked by the host
    compiler); cross-compiled artifacts are for :func:`npas_lab.devices.load_on_device`.

    Raises
    ------
    FileNotFoundError
        If neither a folder at that path nor an artifact of that key exists.
    """
    candidate = Path(path_or_key)
    if not (candidate / METADATA).exists():
        candidate = _artifacts_root() / str(path_or_key)
    if not (candidate / METADATA).exists():
        known = sorted(p.name for p in _artifacts_root().glob("*") if (p / METADATA).exists())
        raise FileNotFoundError(
            f"no artifact at {path_or_key!r} (nor under {_artifacts_root()}); "
            f"known keys: {', '.join(known) or 'none'}"
        )
    metadata = json.loads((candidate / METADATA).read_text())
    library = tvm.runtime.load_module(str(candidate / LIBRARY))
    return LoadedModel(candidate, metadata, library)
