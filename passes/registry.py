"""Named passes: ``register_pass("name")`` makes a pass usable by name in a pipeline and in ``--passes``.

A registered object is a factory: a ``PassBase`` subclass or any callable returning a pass instance,
called with the options given to :func:`create_pass`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import onnx_ir as ir

from edgesparse.passes.errors import PassError

PassFactory = Callable[..., ir.passes.PassBase]

_REGISTRY: dict[str, PassFactory] = {}
# pass -> the passes that must have run before it (shapes inferred, constants folded...)
_REQUIRES: dict[str, tuple[str, ...]] = {}


def register_pass(
    name: str, *, requires: tuple[str, ...] = (), replace: bool = False
) -> Callable[[PassFactory], PassFactory]:
    """Decorator: registers a pass class or factory under ``name``. ``requires``: registered passes that a
    pipeline runs before this one when the list given does not already run them earlier."""

    def decorator(factory: PassFactory) -> PassFactory:
        if name in _REGISTRY and not replace and _REGISTRY[name] is not factory:
            raise PassError(f"pass {name!r} is already registered (by {_REGISTRY[name]!r})")
        _REGISTRY[name] = factory
        _REQUIRES[name] = tuple(requires)
        return factory

    return decorator


def required_passes(name: str) -> tuple[str, ...]:
    return _REQUIRES.get(name, ())


def create_pass(name: str, **options) -> ir.passes.PassBase:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise PassError(f"unknown pass {name!r} (registered: {', '.join(registered_passes())})") from None
    return factory(**options)


def registered_passes() -> list[str]:
    return sorted(_REGISTRY)


def load_plugin(spec: str) -> None:
    """Imports a user's module (a dotted module name or a ``.py`` file) so that its passes register."""
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.is_file():
            raise PassError(f"--plugin {spec}: no such file")
        module_name = f"edgesparse_plugin_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001  (the user's code: whatever it raises is said in one line)
            sys.modules.pop(module_name, None)
            raise PassError(f"--plugin {spec}: {_describe(exc)}") from exc
        return
    try:
        importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        raise PassError(f"--plugin {spec}: {exc}") from None
    except Exception as exc:  # noqa: BLE001
        raise PassError(f"--plugin {spec}: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    """One line for an exception raised by a user's plugin: its type, message and, for syntax, where."""
    if isinstance(exc, SyntaxError):
        return f"syntax error at line {exc.lineno}: {exc.msg}"
    message = (str(exc).strip().splitlines() or [""])[0]
    return f"importing it raised {type(exc).__name__}: {message}"
