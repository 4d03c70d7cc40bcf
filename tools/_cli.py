"""What every command-line tool shares: user errors become one ``error:`` line and exit status 2.

Every layer's error type is an :class:`EdgesparseError` (``PassError``, ``FrontendError``, ``BackendError``)
and is mapped here, once, for every tool. Any other exception is a bug: one ``error:`` line too (exit
status 1), and its traceback only with ``--debug``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

from edgesparse.passes.errors import EdgesparseError

USER_ERROR_EXIT = 2
INTERNAL_ERROR_EXIT = 1


def print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A library's warning (a pass that found nothing to do, masks keeping no channel) as one line."""
    print(f"warning: {message}", file=sys.stderr)


def run_main(main: Callable[[], int | None]) -> None:
    """Calls ``main`` and exits with its status; an :class:`EdgesparseError` prints ``error: ...``."""
    if "--debug" not in sys.argv:
        warnings.showwarning = print_warning
    try:
        status = main()
    except EdgesparseError as exc:
        if "--debug" in sys.argv:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001  (a bug: said in one line, the traceback on request)
        if "--debug" in sys.argv:
            traceback.print_exc()
        first_line = (str(exc).strip().splitlines() or [""])[0]
        print(
            f"error: unexpected {type(exc).__name__}: {first_line} (a bug in edgesparse; --debug shows where)",
            file=sys.stderr,
        )
        sys.exit(INTERNAL_ERROR_EXIT)
    sys.exit(status or 0)


def set_tvm_threads() -> None:
    """TVM uses one thread by default on a 2-core machine: use every core unless the user chose."""
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))


def check_output_path(text: str | os.PathLike, *, directory: bool, flag: str = "-o") -> Path:
    """Refuses, before any work, an output path that cannot be written: empty, under a file, or a directory
    where a file is meant (and the reverse)."""
    if os.fspath(text) == "":
        raise EdgesparseError(f"{flag} '': give a path")
    path = Path(text)
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise EdgesparseError(f"{flag} {path}: {parent} is a file, not a directory")
    if directory and path.exists() and not path.is_dir():
        raise EdgesparseError(f"{flag} {path}: exists and is not a directory")
    if not directory and path.is_dir():
        raise EdgesparseError(f"{flag} {path}: is a directory; give a file name")
    existing = next((parent for parent in (path, *path.parents) if parent.exists()), Path("."))
    target = existing if existing.is_dir() else existing.parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise EdgesparseError(f"{flag} {path}: cannot write in {target} (permission denied)")
    return path


def write_file(path: Path, write: Callable[[str], None], suffix: str) -> None:
    """``write(staging)`` writes the file beside ``path``, then it takes ``path``'s place: an interrupted or
    failed write leaves no partial file. ``suffix``: the staging file's (np.savez adds .npz to any other)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise EdgesparseError(f"-o {path}: cannot write there ({exc.strerror or exc})") from None
    os.close(handle)
    try:
        write(staging)
        os.replace(staging, path)
    except OSError as exc:
        raise EdgesparseError(f"-o {path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        Path(staging).unlink(missing_ok=True)
