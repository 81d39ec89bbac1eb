"""TVM RPC on loopback: a tracker and server(s) as subprocesses, and tracker queries.

:class:`LocalRPC` starts ``python -m tvm.exec.rpc_tracker`` and ``python -m tvm.exec.rpc_server``
on ``127.0.0.1`` with free ports, waits until the servers are registered with the tracker, and
stops exactly the processes it started. This is the phone path without a phone: a phone running
the TVM RPC app registers with a tracker the same way.

Process hygiene: each command starts in its own session (process group), because both TVM tools
spawn helpers (a ``popen_worker`` per tool, a forked child per RPC session). Stopping sends
SIGTERM to the whole group, waits, then SIGKILLs the group, so no helper outlives the context.

Examples
--------
>>> with LocalRPC(key="local") as rpc:  # doctest: +SKIP
...     device = rpc.device()  # "host-cpu-rpc" pointing at this tracker
...     measure(compiled, x, device=device)
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

from npas_lab.devices.profiles import DeviceProfile, available_cores, get_device

__all__ = [
    "DeviceUnavailableError",
    "LocalRPC",
    "TrackerUnreachableError",
    "connect_tracker",
    "request_session",
    "tracker_summary",
    "wait_for_servers",
]

# The tools search [port, port_end) for a free port; a 20-port window makes a lost race with
# another program for the probed port harmless (the default end, 9199, is below most free ports).
_PORT_WINDOW = 20


class TrackerUnreachableError(ConnectionError):
    """No TVM RPC tracker answers at the given address."""


class DeviceUnavailableError(TimeoutError):
    """The tracker had no free server under the key within the request timeout."""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def connect_tracker(host: str, port: int, *, timeout_s: float = 5.0) -> Any:
    """Return a ``tvm.rpc.TrackerSession`` to ``host:port``.

    Raises
    ------
    TrackerUnreachableError
        If nothing accepts a TCP connection there within ``timeout_s`` (TVM's own client would
        retry for 60 s and raise a bare ``RuntimeError``).
    """
    from tvm import rpc

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                break
        except OSError as err:
            if time.monotonic() > deadline:
                raise TrackerUnreachableError(
                    f"no TVM RPC tracker at {host}:{port} ({err}); start one with "
                    f"`python -m tvm.exec.rpc_tracker --host {host} --port {port} "
                    f"--port-end {port + 1}` or use npas_lab.devices.LocalRPC"
                ) from err
            time.sleep(0.1)
    return rpc.connect_tracker(host, port)


def request_session(
    host: str,
    port: int,
    key: str,
    *,
    timeout_s: float | None = 60.0,
    session_timeout_s: float = 0.0,
    priority: int = 1,
) -> tuple[Any, str]:
    """Ask the tracker for a server under ``key``; return the session and the server address.

    TVM's ``TrackerSession.request`` waits in the tracker's queue forever, which hangs a search
    when the only phone has dropped off. This sends the same request with a deadline (an
    abandoned request is harmless: the tracker skips requesters that have hung up) and reports
    which server answered, so a measurement can say where it ran.

    Parameters
    ----------
    host, port : str, int
        The tracker.
    key : str
        Device key the servers registered under.
    timeout_s : float or None
        How long to wait for a free server (None: forever, like TVM).
    session_timeout_s : float
        Session limit enforced by the server (0: none).
    priority : int
        Tracker queue priority (higher is served first).

    Returns
    -------
    session : tvm.rpc.RPCSession
    server : str
        ``"host:port"`` of the server that serves the session.

    Raises
    ------
    TrackerUnreachableError
        If no tracker answers at ``host:port``.
    DeviceUnavailableError
        If no server under ``key`` became free within ``timeout_s``.
    """
    import struct

    from tvm import rpc
    from tvm.rpc import base

    try:
        sock = socket.create_connection((host, port), timeout=5.0)
    except OSError as err:
        raise TrackerUnreachableError(f"no TVM RPC tracker at {host}:{port} ({err})") from err
    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        if struct.unpack("<i", base.recvall(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
            raise TrackerUnreachableError(f"{host}:{port} is not a TVM RPC tracker")
        base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", priority])
        sock.settimeout(timeout_s)
        try:
            reply = base.recvjson(sock)
        except TimeoutError:
            summary = {}
            with contextlib.suppress(Exception):
                summary = tracker_summary(host, port, timeout_s=1.0).get("queue_info", {})
            raise DeviceUnavailableError(
                f"no RPC server with key {key!r} became free at the tracker {host}:{port} within "
                f"{timeout_s} s (queues: {summary}); is the device connected and its RPC app "
                "or server running?"
            ) from None
    finally:
        sock.close()
    if reply[0] != base.TrackerCode.SUCCESS:
        raise RuntimeError(f"tracker {host}:{port} answered {reply!r} to a request for {key!r}")
    url, server_port, matchkey = reply[1]
    session = rpc.connect(url, server_port, matchkey, session_timeout_s)
    return session, f"{url}:{server_port}"


def tracker_summary(host: str, port: int, *, timeout_s: float = 5.0) -> dict[str, Any]:
    """Return the tracker's summary (``server_info``, ``queue_info``) as plain data."""
    tracker = connect_tracker(host, port, timeout_s=timeout_s)
    try:
        return tracker.summary()
    finally:
        tracker.close()


def _registered(summary: dict[str, Any], key: str) -> int:
    # Servers register as "server:<key>"; a free server appears in queue_info[key]["free"].
    return sum(1 for item in summary.get("server_info", []) if item["key"] == f"server:{key}")


def wait_for_servers(
    host: str, port: int, key: str, *, count: int = 1, timeout_s: float = 60.0
) -> None:
    """Block until ``count`` servers are registered with the tracker under ``key``.

    Raises
    ------
    TimeoutError
        If fewer are registered after ``timeout_s``; the message shows what the tracker has.
    """
    deadline = time.monotonic() + timeout_s
    summary: dict[str, Any] = {}
    while time.monotonic() < deadline:
        summary = tracker_summary(host, port, timeout_s=max(0.1, deadline - time.monotonic()))
        if _registered(summary, key) >= count:
            return
        time.sleep(0.2)
    raise TimeoutError(
        f"{count} RPC server(s) with key {key!r} did not register with the tracker at "
        f"{host}:{port} within {timeout_s} s; tracker has {summary.get('server_info')}"
    )


# Started and not yet stopped; weak, so that forgetting an object still lets __del__ stop it.
_LIVE: weakref.WeakSet[LocalRPC] = weakref.WeakSet()


@dataclasses.dataclass
class _Proc:
    role: str
    popen: subprocess.Popen
    log: Path


class LocalRPC:
    """A TVM RPC tracker and ``num_servers`` servers on loopback, as a context manager.

    Parameters
    ----------
    key : str
        Device key the servers register under (``"local"`` matches ``host-cpu-rpc``).
    num_servers : int
        RPC servers to start; each serves one session at a time.
    host : str
        Address everything binds to; keep loopback unless a phone must reach the tracker.
    num_threads : int, optional
        ``TVM_NUM_THREADS`` of the servers (TVM otherwise uses half the hardware threads on x86);
        default :func:`~npas_lab.devices.profiles.available_cores`.
    timeout_s : float
        How long to wait for the tracker to listen and the servers to register.

    Attributes
    ----------
    tracker_host, tracker_port : str, int
        Where the tracker listens (valid after :meth:`start`).
    pids : list of int
        Process ids of the started commands (their helpers share their process groups).
    """

    def __init__(
        self,
        *,
        key: str = "local",
        num_servers: int = 1,
        host: str = "127.0.0.1",
        num_threads: int | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        if num_servers < 1:
            raise ValueError(f"num_servers must be >= 1, got {num_servers}")
        self.key = key
        self.num_servers = num_servers
        self.tracker_host = host
        self.tracker_port: int | None = None
        self.num_threads = num_threads or available_cores()
        self.timeout_s = timeout_s
        self._procs: list[_Proc] = []
        self._logdir: tempfile.TemporaryDirectory | None = None

    @property
    def tracker(self) -> str:
        """The tracker address as ``"host:port"``."""
        if self.tracker_port is None:
            raise RuntimeError("LocalRPC is not started")
        return f"{self.tracker_host}:{self.tracker_port}"

    @property
    def pids(self) -> list[int]:
        """Process ids of the tracker and the servers, in start order."""
        return [p.popen.pid for p in self._procs]

    @property
    def server_pids(self) -> list[int]:
        """Process ids of the servers (each leads a process group with its helpers)."""
        return [p.popen.pid for p in self._procs if p.role.startswith("server")]

    def device(self, name: str = "host-cpu-rpc") -> DeviceProfile:
        """Return profile ``name`` pointed at this tracker and key."""
        return get_device(name).with_tracker(self.tracker, key=self.key)

    def _spawn(self, role: str, args: list[str]) -> _Proc:
        assert self._logdir is not None
        log = Path(self._logdir.name) / f"{role}.log"
        env = {**os.environ, "TVM_NUM_THREADS": str(self.num_threads)}
        with log.open("wb") as fh:
            popen = subprocess.Popen(
                [sys.executable, "-m", *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # own process group: stop() kills the helpers too
            )
        proc = _Proc(role, popen, log)
        self._procs.append(proc)
        _LIVE.add(self)
        return proc

    def _check_alive(self, proc: _Proc) -> None:
        if proc.popen.poll() is not None:
            log = proc.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"RPC {proc.role} exited with code {proc.popen.returncode}; its log ends:\n{log}"
            )

    def start(self) -> LocalRPC:
        """Start the tracker and the servers, and wait until all servers are registered."""
        if self._procs:
            raise RuntimeError("LocalRPC is already started")
        self._logdir = tempfile.TemporaryDirectory(prefix="npas-rpc-")
        try:
            port = _free_port(self.tracker_host)
            self.tracker_port = port
            # All at once: each tool spends seconds importing tvm (twice: its popen_worker too),
            # and a server that finds no tracker yet retries its connection by itself.
            self._spawn(
                "tracker",
                ["tvm.exec.rpc_tracker", "--host", self.tracker_host, "--port", str(port),
                 "--port-end", str(port + 1)],
            )  # fmt: skip
            for i in range(self.num_servers):
                server_port = _free_port(self.tracker_host)
                self._spawn(
                    f"server{i}",
                    ["tvm.exec.rpc_server", "--tracker", self.tracker, "--key", self.key,
                     "--host", self.tracker_host, "--port", str(server_port),
                     "--port-end", str(server_port + _PORT_WINDOW)],
                )  # fmt: skip
            deadline = time.monotonic() + self.timeout_s
            while True:
                for proc in self._procs:
                    self._check_alive(proc)
                try:
                    summary = tracker_summary(self.tracker_host, port, timeout_s=0.2)
                    if _registered(summary, self.key) >= self.num_servers:
                        break
                except TrackerUnreachableError:
                    summary = {}
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.num_servers} RPC server(s) did not register with the tracker at "
                        f"{self.tracker} within {self.timeout_s} s; tracker summary: {summary}"
                    )
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, *, timeout_s: float = 5.0) -> None:
        """Stop every process this object started, with their helpers (no orphans).

        The helpers are terminated first, so that each tool (blocked in ``join`` on its
        ``popen_worker``) reaps them and exits by itself; whatever is left after ``timeout_s``
        is killed with its whole process group.
        """
        import psutil

        for proc in reversed(self._procs):  # servers first, then the tracker
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(proc.popen.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        child.terminate()
        for proc in reversed(self._procs):
            try:
                proc.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=timeout_s)
            # Anything still in the group (the group id outlives its reaped leader while any
            # member lives) is killed; a group with no member left raises ProcessLookupError.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=timeout_s)
        self._procs.clear()
        _LIVE.discard(self)
        self.tracker_port = None
        if self._logdir is not None:
            self._logdir.cleanup()
            self._logdir = None

    def __enter__(self) -> LocalRPC:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort if a caller forgot stop(); never raises
        with contextlib.suppress(Exception):
            if self._procs:
                self.stop()


@atexit.register
def _stop_all_at_exit() -> None:
    # A notebook kernel that exits with a LocalRPC still running must not leave servers behind.
    # (Nothing runs on SIGKILL; the process groups can then be killed by their leader's pid.)
    for rpc in list(_LIVE):
        with contextlib.suppress(Exception):
            rpc.stop()
