"""An emulated aarch64 TVM device: real TVM RPC servers running under qemu-user on this machine.

Why: there is no ARM board here, yet the ARM backend must be exercised end to end. An aarch64 CPython
with the aarch64 apache-tvm wheel runs under ``qemu-aarch64-static`` as ``tvm.exec.rpc_server`` and
registers with a TVM RPC tracker on 127.0.0.1, exactly as a board on the network would. Cross-compiled
modules are uploaded, loaded and run by real aarch64 code, so numerics and the RPC/MetaSchedule plumbing
are real. Timings are not: emulation is ~60x slower than the host and says nothing about ARM speed.

Everything lives in one state folder: the arm64 sysroot (Debian packages unpacked with ``dpkg -x``,
never into ``/``), the aarch64 wheels installed with ``pip --target``, the wrapper used as the device's
python and, in a folder per tracker port (so that devices on other ports run beside it: the tests', a
demo's), the PIDs of running processes and their logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from edgesparse.backends.errors import BackendError

HOST = "127.0.0.1"
HOST_APT_PACKAGES = ("qemu-user-static", "g++-aarch64-linux-gnu")
QEMU = "qemu-aarch64-static"
CROSS_CXX = "aarch64-linux-gnu-g++"

# The smallest set with which the arm64 python3.11 starts and imports TVM (zlib1g: libz.so.1 for Python).
ARM64_APT_PACKAGES = (
    "python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libstdc++6 libgcc-s1 "
    "gcc-12-base zlib1g libffi8 libssl3 libexpat1 libbz2-1.0 liblzma5 libsqlite3-0 libncursesw6 "
    "libtinfo6 libreadline8 libuuid1 libdb5.3 libnsl2 libtirpc3 libcrypt1 libgssapi-krb5-2 "
    "libk5crypto3 libkrb5-3 libkrb5support0 libkeyutils1 libcom-err2 libzstd1 libmd0 libselinux1 "
    "libpcre2-8-0 libacl1"
).split()
# Architecture "all": apt refuses them with an ":arm64" suffix ("has no candidate").
ARCH_ALL_APT_PACKAGES = ("libtirpc-common", "media-types")

# tvm-ffi must stay at 0.1.14.post1: 0.1.15.x segfaults MetaSchedule. tornado/psutil/cloudpickle are
# what the RPC server and MetaSchedule's runner import on the device.
DEVICE_WHEELS = (
    "apache-tvm==0.27.0.post1",
    "apache-tvm-ffi==0.1.14.post1",
    "numpy",
    "ml_dtypes",
    "typing_extensions",
    "psutil",
    "cloudpickle",
    "tornado",
)
WHEEL_PLATFORM_FLAGS = (
    "--platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 "
    "--python-version 3.11 --implementation cp --abi cp311"
).split()
PIP = (sys.executable, "-m", "pip")


class EmulatedArmDevice:
    """An aarch64 TVM RPC device emulated with qemu-user, reachable through a tracker on 127.0.0.1.

    ``setup()`` once (downloads ~0.6 GB), then ``start()``/``stop()``, or ``with dev.running(n):``.
    Clients use ``tvm.rpc.connect_tracker(HOST, tracker_port).request(key)``.
    """

    def __init__(
        self,
        state_dir: Path,
        tracker_port: int = 9190,
        server_port: int = 9090,
        key: str = "arm64-qemu",
    ):
        self.state_dir = Path(state_dir).resolve()
        self.tracker_port = tracker_port
        self.server_port = server_port
        self.key = key
        self._children: dict[str, subprocess.Popen] = {}  # log name -> process this object started

    # ----------------------------------------------------------------------------------- paths
    @property
    def sysroot(self) -> Path:
        return self.state_dir / "sysroot"

    @property
    def site(self) -> Path:
        return self.state_dir / "site"

    @property
    def wrapper(self) -> Path:
        return self.state_dir / "python3-aarch64"

    @property
    def logs_dir(self) -> Path:
        """The setup's log (apt, pip)."""
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        """The running device's PIDs and logs (``tracker.log``, ``server-<i>.log``)."""
        return self.state_dir / "run" / str(self.tracker_port)

    @property
    def _pids_file(self) -> Path:
        return self.run_dir / "pids.json"

    @property
    def rpc_address(self) -> str:
        """``host:port:key``, the form MetaSchedule/CLI options take for a tracker-reached device."""
        return f"{HOST}:{self.tracker_port}:{self.key}"

    # ----------------------------------------------------------------------------------- setup
    def _steps(self) -> list[tuple[str, Callable[[], bool], Callable[[], None]]]:
        """(name, is_done, run) for each setup step, in order."""
        return [
            ("host tools (qemu-user-static, aarch64 g++)", _host_tools_present, self._install_host_tools),
            ("arm64 sysroot", self._marker_exists("sysroot"), self._build_sysroot),
            ("aarch64 wheels", self._marker_exists("wheels"), self._download_wheels),
            ("device site-packages", self._marker_exists("site"), self._install_site),
            ("device python wrapper", self.wrapper.exists, self._write_wrapper),
            ("smoke test: emulated python imports tvm", self._marker_exists("smoke"), self._smoke_test),
        ]

    def is_set_up(self) -> bool:
        return all(is_done() for _, is_done, _ in self._steps())

    def setup(self) -> None:
        """Make the device runnable; steps already done are skipped, so it is safe to re-run."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        steps = self._steps()
        for i, (name, is_done, run) in enumerate(steps, 1):
            prefix = f"[{i}/{len(steps)}] {name}"
            if is_done():
                print(f"{prefix}: already done", flush=True)
                continue
            print(f"{prefix} ...", flush=True)
            t0 = time.monotonic()
            run()
            print(f"{prefix}: done in {time.monotonic() - t0:.0f} s", flush=True)

    def _marker(self, step: str) -> Path:
        return self.state_dir / ".done" / step

    def _marker_exists(self, step: str) -> Callable[[], bool]:
        return self._marker(step).exists

    def _mark_done(self, step: str) -> None:
        self._marker(step).parent.mkdir(parents=True, exist_ok=True)
        self._marker(step).touch()

    def _install_host_tools(self) -> None:
        _require_root(f"apt-get install {' '.join(HOST_APT_PACKAGES)}")
        self._run(["apt-get", "update"])
        self._run(["apt-get", "install", "-y", *HOST_APT_PACKAGES])

    def _build_sysroot(self) -> None:
        if "arm64" not in _foreign_architectures():
            _require_root("dpkg --add-architecture arm64")
            self._run(["dpkg", "--add-architecture", "arm64"])
        if os.geteuid() == 0:  # the package lists may predate the arm64 architecture
            self._run(["apt-get", "update"])
        debs = _fresh_dir(self.state_dir / "debs")
        sysroot = _fresh_dir(self.sysroot)  # a half-unpacked sysroot from an interrupted run is discarded
        packages = [f"{p}:arm64" for p in ARM64_APT_PACKAGES] + list(ARCH_ALL_APT_PACKAGES)
        self._run(["apt-get", "download", *packages], cwd=debs)
        for deb in sorted(debs.glob("*.deb")):
            self._run(["dpkg", "-x", str(deb), str(sysroot)])
        self._mark_done("sysroot")

    def _download_wheels(self) -> None:
        wheels = _fresh_dir(self.state_dir / "wheels")
        pip_flags = ["--no-deps", "--only-binary=:all:", *WHEEL_PLATFORM_FLAGS]
        self._run([*PIP, "download", *pip_flags, "-d", str(wheels), *DEVICE_WHEELS])
        self._mark_done("wheels")

    def _install_site(self) -> None:
        # pip --target skips packages already present, so an interrupted install must start clean.
        site = _fresh_dir(self.site)
        wheels = sorted(str(w) for w in (self.state_dir / "wheels").glob("*.whl"))
        self._run([*PIP, "install", "--no-index", "--no-deps", *WHEEL_PLATFORM_FLAGS, "--target", str(site), *wheels])
        self._mark_done("site")

    def _write_wrapper(self) -> None:
        # `-0 "$0"` makes the guest's sys.executable this script: the RPC server re-launches
        # sys.executable for its worker, and an aarch64 binary launched directly fails (Exec format error).
        qemu = shutil.which(QEMU) or QEMU
        q = shlex.quote
        script = (
            "#!/bin/sh\n"
            f'exec {q(qemu)} -0 "$0" -L {q(str(self.sysroot))} -E PYTHONPATH={q(str(self.site))} '
            f'{q(str(self.sysroot / "usr/bin/python3.11"))} "$@"\n'
        )
        tmp = self.wrapper.with_suffix(".tmp")
        tmp.write_text(script)
        tmp.chmod(0o755)
        tmp.replace(self.wrapper)

    def _smoke_test(self) -> None:
        self._run(
            [str(self.wrapper), "-c", "import tvm, tvm.rpc; print('device tvm', tvm.__version__)"],
            env=self._server_env(),
        )
        self._mark_done("smoke")

    def _run(self, cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> None:
        """Run a setup command, its output appended to the setup log (apt and pip are verbose)."""
        log = self.logs_dir / "setup.log"
        with log.open("a") as out:
            out.write(f"\n$ {shlex.join(cmd)}\n")
            out.flush()
            rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise BackendError(f"`{shlex.join(cmd[:3])} ...` failed (exit {rc}); read {log}")

    # ----------------------------------------------------------------------------------- start/stop
    def start(self, n_servers: int = 1, timeout_s: float = 120.0) -> None:
        """Start the tracker and ``n_servers`` emulated servers; return once all are registered."""
        if not self.is_set_up():
            raise BackendError(f"the emulated device in {self.state_dir} is not set up; run setup first")
        if self._running_groups():
            raise BackendError(f"the emulated device in {self.state_dir} is already running; stop it first")
        self._pids_file.unlink(missing_ok=True)  # stale: its processes are gone
        server_ports = [self.server_port + i for i in range(n_servers)]
        for port in (self.tracker_port, *server_ports):
            _check_port_free(port)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._launch(
                "tracker",
                [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", HOST, *_port_args(self.tracker_port)],
            )
            self._wait_for(
                lambda: self._tracker_summary() is not None,
                timeout_s,
                lambda: f"the tracker did not answer; read {self.run_dir / 'tracker.log'}",
            )
            for i, port in enumerate(server_ports):
                self._launch(f"server-{i}", self._server_cmd(port), env=self._server_env())
            self._wait_for(
                lambda: self._free_servers() >= n_servers,
                timeout_s,
                lambda: (
                    f"{self._free_servers()} of {n_servers} servers registered under key "
                    f"{self.key!r}; read {self.run_dir}/server-<i>.log"
                ),
            )
        except BaseException:
            self.stop()  # leave nothing half-started behind, Ctrl-C included
            raise

    def stop(self) -> None:
        """Kill every process group that start() created (servers, their workers, tracker)."""
        groups = self._recorded_groups()
        for pgid in groups:
            _signal_group(pgid, signal.SIGTERM)
        if not _wait_until(lambda: not any(_group_alive(g) for g in groups), 10.0):
            for pgid in groups:
                _signal_group(pgid, signal.SIGKILL)
            _wait_until(lambda: not any(_group_alive(g) for g in groups), 10.0)
        for child in self._children.values():
            child.wait()  # reap, so no zombies remain in a long-lived caller
        self._children.clear()
        self._pids_file.unlink(missing_ok=True)

    @contextlib.contextmanager
    def running(self, n_servers: int = 1, timeout_s: float = 120.0) -> Iterator[EmulatedArmDevice]:
        """``with dev.running(2) as dev:`` starts the device and always stops it on exit."""
        self.start(n_servers, timeout_s)
        try:
            yield self
        finally:
            self.stop()

    def status(self) -> dict:
        summary = self._tracker_summary()
        return {
            "state_dir": str(self.state_dir),
            "set_up": self.is_set_up(),
            "running_process_groups": len(self._running_groups()),
            "tracker_answers": summary is not None,
            "servers_free": _free_under_key(summary, self.key),
            "rpc_address": self.rpc_address,
        }

    def _server_cmd(self, port: int) -> list[str]:
        return [
            str(self.wrapper),
            "-m",
            "tvm.exec.rpc_server",
            "--tracker",
            f"{HOST}:{self.tracker_port}",
            "--key",
            self.key,
            "--host",
            HOST,
            *_port_args(port),
            # provides tvm.contrib.random.random_fill_for_measure, which MetaSchedule's runner calls
            "--load-library",
            str(self.site / "tvm/lib/libtvm_runtime_extra.so"),
        ]

    @staticmethod
    def _server_env() -> dict:
        # CXX: a `.tar` export is linked on the device, and must be linked for aarch64.
        # TVM_USE_RUNTIME_LIB: load only the runtime, far quicker under emulation than the compiler.
        # TVM_NUM_THREADS=1: emulated worker threads spin-wait on each other; on a loaded host that
        # stalled a run for minutes. Timings under emulation mean nothing anyway.
        return {**os.environ, "CXX": CROSS_CXX, "TVM_USE_RUNTIME_LIB": "1", "TVM_NUM_THREADS": "1"}

    def _launch(self, name: str, cmd: list[str], env: dict | None = None) -> None:
        """Start one process in its own session, so that stop() can kill it with all its children."""
        with (self.run_dir / f"{name}.log").open("w") as log:
            child = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self._children[name] = child
        # Recorded at once, so that stop() (maybe from another process) finds even a half-started device.
        self._write_pids([*self._recorded_groups(), child.pid])

    def _wait_for(self, ready: Callable[[], bool], timeout_s: float, explain: Callable[[], str]) -> None:
        """Poll until ready(); fail early if one of our processes died, or after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while not ready():
            for name, child in self._children.items():
                if child.poll() is not None:
                    raise BackendError(
                        f"{name} exited with code {child.returncode}; read {self.run_dir / (name + '.log')}"
                    )
            if time.monotonic() > deadline:
                raise BackendError(f"after {timeout_s:.0f} s, {explain()}")
            time.sleep(1.0)

    def _tracker_summary(self) -> dict | None:
        """The tracker's summary, or None if nothing answers on its port."""
        try:  # a quick probe first: tvm.rpc.connect_tracker retries a refused connection for 60 s
            socket.create_connection((HOST, self.tracker_port), timeout=1.0).close()
        except OSError:
            return None
        import tvm.rpc  # deferred: importing TVM takes seconds, and setup/stop do not need it

        try:
            return tvm.rpc.connect_tracker(HOST, self.tracker_port).summary()
        except (OSError, RuntimeError):
            return None

    def _free_servers(self) -> int:
        return _free_under_key(self._tracker_summary(), self.key)

    def _recorded_groups(self) -> list[int]:
        if not self._pids_file.exists():
            return []
        return json.loads(self._pids_file.read_text())["process_groups"]

    def _running_groups(self) -> list[int]:
        return [g for g in self._recorded_groups() if _group_alive(g)]

    def _write_pids(self, groups: list[int]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._pids_file.write_text(json.dumps({"process_groups": groups}) + "\n")


# --------------------------------------------------------------------------------------- helpers
def _host_tools_present() -> bool:
    return all(shutil.which(tool) for tool in (QEMU, CROSS_CXX))


def _foreign_architectures() -> list[str]:
    out = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True)
    return out.stdout.split()


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise BackendError(f"`{what}` needs root; run it as root once, then re-run setup")


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _port_args(port: int) -> list[str]:
    # TVM silently tries the next ports up to --port-end (exclusive); pin the exact port instead.
    return ["--port", str(port), "--port-end", str(port + 1)]


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as TVM binds: ignore TIME_WAIT
        try:
            sock.bind((HOST, port))
        except OSError as err:
            raise BackendError(
                f"port {HOST}:{port} is already in use ({err.strerror}); stop what holds it or choose other ports"
            ) from None


def _free_under_key(summary: dict | None, key: str) -> int:
    if summary is None:
        return 0
    return summary.get("queue_info", {}).get(key, {}).get("free", 0)


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is in the group (a zombie still counts for kill(pid, 0))."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        state, process_group = fields[0], int(fields[2])
        if process_group == pgid and state != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _wait_until(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
