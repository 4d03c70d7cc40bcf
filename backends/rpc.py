"""Reaching a device through TVM's RPC tracker: ``HOST:PORT:KEY`` addresses, checked before use.

TVM's own client retries a dead tracker for a minute and waits forever for a key no server has; these
helpers answer at once with a one-line :class:`BackendError` instead.
"""

from __future__ import annotations

import dataclasses
import socket

from tvm import rpc

from edgesparse.backends.errors import BackendError

CONNECT_TIMEOUT_S = 5.0
# Emulated or slow boards: a session outlives uploads, the first run, and time_evaluator repeats.
DEFAULT_SESSION_TIMEOUT_S = 600


@dataclasses.dataclass(frozen=True)
class RPCAddress:
    host: str
    port: int
    key: str

    @classmethod
    def parse(cls, text: str) -> "RPCAddress":
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2]:
            raise BackendError(f"--rpc {text!r}: expected HOST:PORT:KEY, e.g. 127.0.0.1:9190:arm64-qemu")
        return cls(parts[0], int(parts[1]), parts[2])

    def __str__(self) -> str:
        return f"{self.host}:{self.port}:{self.key}"


def check_tracker(address: RPCAddress) -> rpc.TrackerSession:
    """Connects to the tracker and checks that some server is registered under the key."""
    try:
        with socket.create_connection((address.host, address.port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise BackendError(
            f"RPC tracker at {address.host}:{address.port} does not answer ({exc.strerror or exc})"
        ) from None
    tracker = rpc.connect_tracker(address.host, address.port)
    keys = tracker.summary().get("queue_info", {})
    if address.key not in keys:
        known = ", ".join(sorted(keys)) or "none"
        raise BackendError(
            f"RPC tracker at {address.host}:{address.port} has no device with key {address.key!r} (keys: {known})"
        )
    return tracker


def request_session(address: RPCAddress, session_timeout: float = DEFAULT_SESSION_TIMEOUT_S) -> rpc.RPCSession:
    return check_tracker(address).request(address.key, priority=1, session_timeout=session_timeout)
