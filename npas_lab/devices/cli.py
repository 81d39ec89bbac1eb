"""``npas-lab device``: run a TVM RPC tracker or server, and list what a tracker holds.

Sub-commands (thin wrappers over ``python -m tvm.exec.rpc_tracker`` / ``rpc_server``)
-------------------------------------------------------------------------------------
``device tracker [--host H] [--port P]``
    A tracker, loopback by default; give ``--host 0.0.0.0`` for a phone on the network to reach.
``device serve --key K [--tracker H:P] [--host H] [--port P]``
    An RPC server on this machine registered under key ``K`` (the ``host-cpu-rpc`` device uses
    ``local``); start several for several concurrent measurements.
``device list [--tracker H:P]``
    The tracker's queues: per key, the servers registered, free, and the requests waiting.

The tracker address defaults to ``$NPAS_LAB_TRACKER`` (else ``127.0.0.1:9190``), the one the
RPC device profiles use. Errors a user can fix (no tracker there, a port in use, a bad address)
print one line and exit with status 2.

``add_device_parser(subparsers)`` adds the ``device`` command to the ``npas-lab`` parser;
``python -m npas_lab.devices.cli device ...`` runs it stand-alone.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Sequence

from npas_lab.devices.profiles import DEFAULT_TRACKER
from npas_lab.devices.rpc import TrackerUnreachableError, connect_tracker, tracker_summary

__all__ = ["add_device_parser", "format_summary", "main"]

# TVM's tools search [port, port_end) for a free port; its default end (9199) makes any port above
# it fail to bind (TVM_NOTES.md), so the window is always given.
_PORT_WINDOW = 10


class _UsageError(Exception):
    """A mistake the user can fix: printed as one line, exit status 2."""


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise _UsageError(f"--tracker {text!r}: expected HOST:PORT, e.g. {DEFAULT_TRACKER}")
    return host, int(port)


def _default_tracker() -> str:
    return os.environ.get("NPAS_LAB_TRACKER", DEFAULT_TRACKER)


def _default_port() -> int:
    try:
        return _address(_default_tracker())[1]
    except _UsageError:  # a malformed $NPAS_LAB_TRACKER is reported by the commands that use it
        return _address(DEFAULT_TRACKER)[1]


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            message = f"cannot listen on {host}:{port} ({err.strerror}); pick another --port"
            raise _UsageError(message) from None


def _run_tool(args: list[str]) -> int:
    # The TVM tool runs in the foreground; Ctrl-C stops it (and its popen_worker) cleanly.
    proc = subprocess.Popen([sys.executable, "-m", *args])
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        return 0


def _cmd_tracker(args: argparse.Namespace) -> int:
    _check_port_free(args.host, args.port)
    print(f"TVM RPC tracker on {args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    return _run_tool(
        ["tvm.exec.rpc_tracker", "--host", args.host, "--port", str(args.port),
         "--port-end", str(args.port + 1)]
    )  # fmt: skip


def _cmd_serve(args: argparse.Namespace) -> int:
    host, port = _address(args.tracker)
    if not args.key:
        raise _UsageError("--key must not be empty (it is how devices are found at the tracker)")
    try:
        connect_tracker(host, port, timeout_s=args.timeout).close()
    except TrackerUnreachableError:
        raise _UsageError(
            f"no TVM RPC tracker at {host}:{port}; start one with `npas-lab device tracker "
            f"--port {port}` or pass --tracker HOST:PORT"
        ) from None
    print(f"TVM RPC server, key {args.key!r}, tracker {host}:{port} (Ctrl-C stops it)", flush=True)
    return _run_tool(
        ["tvm.exec.rpc_server", "--tracker", f"{host}:{port}", "--key", args.key,
         "--host", args.host, "--port", str(args.port),
         "--port-end", str(args.port + _PORT_WINDOW)]
    )  # fmt: skip


def format_summary(summary: dict) -> str:
    """Return a tracker summary as a table: key, servers, free, pending, server addresses.

    Parameters
    ----------
    summary : dict
        What :func:`~npas_lab.devices.rpc.tracker_summary` returns.
    """
    servers: dict[str, list[str]] = {}
    for item in summary.get("server_info", []):
        key = str(item.get("key", "")).removeprefix("server:")
        addr = item.get("addr") or ["?", "?"]
        servers.setdefault(key, []).append(f"{addr[0]}:{addr[1]}")
    queues = summary.get("queue_info", {})
    keys = sorted(set(servers) | set(queues))
    if not keys:
        return "no devices registered"
    rows = [("key", "servers", "free", "pending", "addresses")]
    for key in keys:
        queue = queues.get(key, {})
        rows.append(
            (
                key,
                str(len(servers.get(key, []))),
                str(queue.get("free", 0)),
                str(queue.get("pending", 0)),
                " ".join(sorted(servers.get(key, []))) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    )


def _cmd_list(args: argparse.Namespace) -> int:
    host, port = _address(args.tracker)
    try:
        summary = tracker_summary(host, port, timeout_s=args.timeout)
    except TrackerUnreachableError:
        raise _UsageError(
            f"no TVM RPC tracker at {host}:{port}; start one with `npas-lab device tracker "
            f"--port {port}` or pass --tracker HOST:PORT"
        ) from None
    print(f"tracker {host}:{port}")
    print(format_summary(summary))
    return 0


def _guarded(func):
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except _UsageError as err:
            print(f"npas-lab device {args.device_command}: error: {err}", file=sys.stderr)
            return 2

    return run


def add_device_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``device`` command (``tracker``, ``serve``, ``list``) to ``subparsers``.

    Each handler is set with ``set_defaults(func=...)``, takes the parsed namespace and returns
    the exit status (2 for user-fixable errors, printed as one line).
    """
    device = subparsers.add_parser(
        "device", help="TVM RPC tracker and servers: run them, list what they serve"
    )
    sub = device.add_subparsers(dest="device_command", required=True)

    p = sub.add_parser("tracker", help="run a TVM RPC tracker (foreground)")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 lets phones on the LAN in")
    p.add_argument("--port", type=int, default=_default_port())
    p.set_defaults(func=_guarded(_cmd_tracker))

    p = sub.add_parser("serve", help="run a TVM RPC server registered under --key")
    p.add_argument("--key", required=True, help="device key, e.g. local (host-cpu-rpc)")
    p.add_argument("--tracker", default=_default_tracker(), help="HOST:PORT of the tracker")
    p.add_argument("--host", default="127.0.0.1", help="address the server listens on")
    p.add_argument("--port", type=int, default=9090, help="first port tried")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to reach the tracker")
    p.set_defaults(func=_guarded(_cmd_serve))

    p = sub.add_parser("list", help="show the tracker's queues per device key")
    p.add_argument("--tracker", default=_default_tracker(), help="HOST:PORT of the tracker")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to reach the tracker")
    p.set_defaults(func=_guarded(_cmd_list))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``device ...`` stand-alone (``python -m npas_lab.devices.cli device list``)."""
    parser = argparse.ArgumentParser(prog="npas-lab")
    add_device_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
