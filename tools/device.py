"""Manage the emulated aarch64 TVM device (qemu-user RPC servers behind a tracker on 127.0.0.1).

    python tools/device.py setup                 # once: host tools, arm64 sysroot, aarch64 TVM (~0.6 GB)
    python tools/device.py start --servers 2     # tracker + 2 servers; returns once they are registered
    python tools/device.py status                # JSON
    python tools/device.py stop

Numerics run on real aarch64 code; timings under emulation mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edgesparse.backends.emulated_device import EmulatedArmDevice
from edgesparse.passes.errors import EdgesparseError

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["setup", "start", "stop", "status"])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=REPO_ROOT / ".device",
        help="where the sysroot, wheels, PIDs and logs live (default: %(default)s)",
    )
    parser.add_argument("--servers", type=int, default=1, help="emulated RPC servers to start (default: 1)")
    parser.add_argument("--tracker-port", type=int, default=9190)
    parser.add_argument("--server-port", type=int, default=9090, help="first server port; server i uses +i")
    parser.add_argument("--key", default="arm64-qemu", help="device key the servers register under")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for registration")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = EmulatedArmDevice(args.state_dir, args.tracker_port, args.server_port, args.key)
    try:
        if args.command == "setup":
            device.setup()
        elif args.command == "start":
            t0 = time.monotonic()
            device.start(args.servers, args.timeout)
            print(
                f"{args.servers} server(s) registered in {time.monotonic() - t0:.0f} s; "
                f"rpc address {device.rpc_address}"
            )
        elif args.command == "stop":
            device.stop()
        else:
            print(json.dumps(device.status(), indent=2))
    except EdgesparseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
