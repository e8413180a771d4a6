"""Hydra config tree and the strict loader that turns it into frozen dataclasses.

The YAML files beside this module are composed by Hydra at each entry point (groups ``env/``,
``policy/``, ``train/``, ``export/``, ``robot/``). The composed config is converted *once* with
:func:`to_dataclass` into frozen, keyword-only dataclasses; library code never sees OmegaConf.
The loader rejects unknown keys, missing required keys, ill-typed values and values outside the
range each dataclass declares for its numeric fields (:func:`ranges`), naming the full dotted path
of the offending field, the value and the allowed range (follows the openpi/LeRobot habit of typed
configs), before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

CONFIG_DIR = Path(__file__).resolve().parent
T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is unknown, missing, or of the wrong type or range."""


class Range:
    """An allowed interval written as in maths: ``">0"``, ``">=1"``, ``"[0,1)"``, ``"(0,1]"``."""

    def __init__(self, spec: str):
        self.spec = spec.replace(" ", "")
        self.lo = self.hi = None
        self.lo_open = self.hi_open = False
        if self.spec[0] in "[(":
            lo, hi = self.spec[1:-1].split(",")
            self.lo, self.lo_open = float(lo), self.spec[0] == "("
            self.hi, self.hi_open = float(hi), self.spec[-1] == ")"
        elif self.spec.startswith(">="):
            self.lo = float(self.spec[2:])
        elif self.spec.startswith(">"):
            self.lo, self.lo_open = float(self.spec[1:]), True
        else:
            raise ValueError(f"unknown range {spec!r}")

    def __contains__(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def __str__(self) -> str:
        if self.spec[0] in "[(":
            return f"in {self.spec.replace(',', ', ')}"
        return f">= {self.spec[2:]}" if self.spec.startswith(">=") else f"> {self.spec[1:]}"


def _check_range(value: Any, rng: Range, path: str) -> None:
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if v is not None and (not math.isfinite(v) or v not in rng):
            raise ConfigError(f"{path}: {value!r} is out of range: must be {rng}")


def ranges(**specs: str):
    """Class decorator: the allowed range of each numeric field (``None`` always passes; a tuple is
    checked item by item). The loader checks them before construction, naming the dotted path; a
    dataclass built directly checks them first thing in ``__post_init__``."""

    def wrap(cls):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(specs) - names)
        if unknown:
            raise TypeError(f"{cls.__name__}: ranges for unknown field(s) {unknown}")
        cls.__ranges__ = {k: Range(v) for k, v in specs.items()}
        post = getattr(cls, "__post_init__", None)

        def __post_init__(self) -> None:
            for name, rng in cls.__ranges__.items():
                _check_range(getattr(self, name), rng, f"{cls.__name__}.{name}")
            if post is not None:
                post(self)

        cls.__post_init__ = __post_init__
        return cls

    return wrap


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{path}: must not be null (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {list(choices)}")
        return value
    if dataclasses.is_dataclass(tp):
        return to_dataclass(tp, value, path)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            items = [_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {
            _convert(key_tp, k, f"{path}.{k}"): _convert(val_tp, v, f"{path}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {_type_name(tp)}")


def to_dataclass(cls: type[T], data: Any, path: str = "config") -> T:
    """Build the frozen dataclass ``cls`` from plain ``data`` (dicts/lists/scalars), strictly.

    Unknown keys, missing required keys and ill-typed values raise :class:`ConfigError` whose
    message starts with the dotted path of the field (e.g. ``train.env.task: ...``).
    Range checks live in each dataclass's ``__post_init__`` and raise ``ValueError``; they are
    re-raised here as :class:`ConfigError` with the path prefixed.
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping for {cls.__name__}, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {unknown} for {cls.__name__}; known keys: {sorted(fields)}"
        )
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{path}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path}.{name}: missing required key")
    for name, rng in getattr(cls, "__ranges__", {}).items():
        if name in kwargs:
            _check_range(kwargs[name], rng, f"{path}.{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """The inverse of :func:`to_dataclass`: plain, JSON/YAML-serialisable data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def from_hydra(cls: type[T], cfg: Any, path: str = "config") -> T:
    """Convert a composed Hydra/OmegaConf config once into ``cls`` (resolving interpolations)."""
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:  # omegaconf raises its own MissingMandatoryValue etc.
        raise ConfigError(f"{path}: {exc}") from exc
    return to_dataclass(cls, data, path)


def compose(config_name: str, overrides: typing.Sequence[str] = ()) -> Any:
    """Compose ``configs/<config_name>.yaml`` with Hydra overrides, outside ``@hydra.main``.

    Used by tests, benchmarks and the in-process runners, so every path shares one config tree.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``; used by ``__post_init__`` checks."""
    if not condition:
        raise ValueError(message)


def hydra_entry(config_name: str, cls: type[T], run: typing.Callable[[T, Path], object]) -> typing.Callable[[], None]:
    """A console-script ``main`` for ``run(config, run_dir)`` with ``configs/<config_name>.yaml``.

    Composes with Hydra (command-line overrides), converts once to ``cls`` and passes the run's
    output directory. Known user-facing failures (a ``ValueError`` such as a bad config, a
    checkpoint or bundle mismatch, a failed parity or calibration) end with one clear line.
    """

    def main() -> None:
        import hydra
        from hydra.core.hydra_config import HydraConfig

        @hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")
        def _run(cfg) -> None:
            try:
                run(from_hydra(cls, cfg, config_name), Path(HydraConfig.get().runtime.output_dir))
            except ValueError as exc:
                raise SystemExit(f"{config_name} failed: {exc}") from exc

        _run()

    return main
