"""Reaching a device through TVM's RPC tracker: ``HOST:PORT:KEY`` addresses, checked before use.

TVM's own client retries a dead tracker for a minute and waits forever for a key no server has; these
helpers answer at once with a one-line :class:`BackendError` instead.
"""

from __future__ import annotations

import dataclasses
import socket
import struct

from tvm import rpc
from tvm.rpc.base import RPC_TRACKER_MAGIC

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
        if not 0 < int(parts[1]) < 65536:
            raise BackendError(f"--rpc {text!r}: port {int(parts[1])} is not between 1 and 65535")
        return cls(parts[0], int(parts[1]), parts[2])

    def __str__(self) -> str:
        return f"{self.host}:{self.port}:{self.key}"


def _handshake(address: RPCAddress) -> None:
    """Speaks the first words of the tracker protocol, with a timeout: a port where nothing listens, or a
    server that is no tracker (or never answers), is a one-line error instead of a hang or a traceback."""
    where = f"RPC tracker at {address.host}:{address.port}"
    try:
        with socket.create_connection((address.host, address.port), timeout=CONNECT_TIMEOUT_S) as sock:
            sock.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
            answer = b""
            while len(answer) < 4:
                chunk = sock.recv(4 - len(answer))
                if not chunk:
                    break
                answer += chunk
    except socket.timeout:
        raise BackendError(
            f"{where} does not answer the tracker protocol within {CONNECT_TIMEOUT_S:g} seconds (is it an RPC tracker?)"
        ) from None
    except OSError as exc:
        raise BackendError(f"{where} does not answer ({exc.strerror or exc})") from None
    if len(answer) < 4 or struct.unpack("<i", answer)[0] != RPC_TRACKER_MAGIC:
        raise BackendError(f"{where} is not an RPC tracker (it answered {answer!r} to the tracker handshake)")


def check_tracker(address: RPCAddress) -> rpc.TrackerSession:
    """Connects to the tracker and checks that some server is registered under the key."""
    _handshake(address)
    try:
        tracker = rpc.connect_tracker(address.host, address.port)
        keys = tracker.summary().get("queue_info", {})
    except (OSError, RuntimeError) as exc:
        raise BackendError(f"RPC tracker at {address.host}:{address.port}: {exc}") from None
    if address.key not in keys:
        known = ", ".join(sorted(keys)) or "none"
        raise BackendError(
            f"RPC tracker at {address.host}:{address.port} has no device with key {address.key!r} (keys: {known})"
        )
    return tracker


def request_session(address: RPCAddress, session_timeout: float = DEFAULT_SESSION_TIMEOUT_S) -> rpc.RPCSession:
    return check_tracker(address).request(address.key, priority=1, session_timeout=session_timeout)
