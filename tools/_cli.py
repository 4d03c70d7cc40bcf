"""What every command-line tool shares: user errors become one ``error:`` line and exit status 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from edgesparse.passes.errors import EdgesparseError

USER_ERROR_EXIT = 2


def run_main(main: Callable[[], int | None]) -> None:
    """Calls ``main`` and exits with its status; an :class:`EdgesparseError` prints ``error: ...``."""
    try:
        status = main()
    except EdgesparseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)


def set_tvm_threads() -> None:
    """TVM uses one thread by default on a 2-core machine: use every core unless the user chose."""
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
