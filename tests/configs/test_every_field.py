"""Every numeric field of every entry point's config has a declared range, and every value outside
it (and every bad device, provider or type) is refused at load, naming the dotted path and value."""

import dataclasses
import subprocess
import sys
import types
import typing

import pytest

from pushcut.calibration.cli import CalibrateConfig
from pushcut.configs import CONFIG_DIR, ConfigError, compose, to_dataclass, to_dict
from pushcut.deploy.serve import ServeConfig
from pushcut.policy.export import ExportConfig
from pushcut.sim.demos import DemosConfig
from pushcut.training.config import EvalConfig, SFTConfig, TrainConfig

ENTRY_POINTS = {  # config name -> (dataclass, overrides that fill its required keys)
    "sft": (SFTConfig, []),
    "eval": (EvalConfig, ["checkpoint=ckpt"]),
    "train": (TrainConfig, ["init_checkpoint=ckpt"]),
    "export": (ExportConfig, ["checkpoint=ckpt"]),
    "demos": (DemosConfig, []),
    "calibrate": (CalibrateConfig, []),
    "serve": (ServeConfig, ["bundle=b"]),
}
tried, refused = [], []


def _defaults(name):
    """The entry point's composed defaults, every field spelled out, as the loader fills them."""
    from omegaconf import OmegaConf

    cls, overrides = ENTRY_POINTS[name]
    return cls, to_dict(to_dataclass(cls, OmegaConf.to_container(compose(name, overrides), resolve=True), name))


@pytest.fixture(scope="module", autouse=True)
def summary():
    """The table's tally, printed after the module (``pytest -s``) for the record."""
    yield
    print(f"\nconfig validation: {len(refused)} of {len(tried)} bad inputs refused at load, "
          f"over {len(set(tried))} fields of {len(ENTRY_POINTS)} entry points")


def numeric_fields(cls, prefix=()):
    """(path, owning dataclass, field, is_int, is_tuple) of every int/float field, nested ones too."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
            tp = args[0]
        if dataclasses.is_dataclass(tp):
            yield from numeric_fields(tp, (*prefix, f.name))
            continue
        is_tuple = typing.get_origin(tp) is tuple
        item = typing.get_args(tp)[0] if is_tuple else tp
        if item in (int, float):
            yield (*prefix, f.name), cls, f.name, item is int, is_tuple


def bad_values(rng, is_int):
    out = []
    step = 1 if is_int else 0.5
    if rng.lo is not None:
        out.append(rng.lo if rng.lo_open else rng.lo - step)
    if rng.hi is not None:
        out.append(rng.hi if rng.hi_open else rng.hi + step)
    out = [int(v) for v in out] if is_int else out + [float("nan"), float("inf")]
    return out


def _get(data, path):
    for key in path:
        data = data[key]
    return data


def _set(data, path, value):
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_every_numeric_field_declares_a_range_and_refuses_values_outside_it(name):
    import copy

    cls, base = _defaults(name)
    fields = list(numeric_fields(cls))
    undeclared = [".".join(p) for p, owner, f, _, _ in fields if f not in getattr(owner, "__ranges__", {})]
    assert not undeclared, f"fields without a declared range: {undeclared}"
    for path, owner, field, is_int, is_tuple in fields:
        dotted = ".".join((name, *path))
        for bad in bad_values(owner.__ranges__[field], is_int):
            data = copy.deepcopy(base)
            default = _get(base, path)
            if is_tuple and default is None:  # an optional tuple, unset by default: every item out of range
                tp = next(a for a in typing.get_args(typing.get_type_hints(owner)[field]) if a is not type(None))
                value = [bad] * len(typing.get_args(tp))
            else:
                value = [bad, *default[1:]] if is_tuple else bad  # the first item out of range
            _set(data, path, value)
            tried.append(dotted)
            with pytest.raises(ConfigError) as exc:
                to_dataclass(cls, data, name)
            msg = str(exc.value)
            assert msg.startswith(f"{dotted}: ") and "out of range: must be" in msg, msg
            assert repr(bad) in msg, msg  # the bad value itself
            refused.append(dotted)


@pytest.mark.parametrize("name,path,value,match", [
    ("train", ("learner", "device"), "banana", r"train.learner: device: 'banana' is not a device"),
    ("train", ("learner", "device"), "cuda:7", r"train.learner: device: 'cuda:7' asked for, but this machine has"),
    ("eval", ("providers",), ["CPUExecutionProvidr"], r"eval: providers: \['CPUExecutionProvidr'\] not onnxruntime"),
    ("sft", ("lr",), "fast", r"sft.lr: expected a number, got 'fast'"),
    ("sft", ("steps",), 1.5, r"sft.steps: expected an integer, got 1.5"),
    ("train", ("rollout", "backend"), "dask", r"train.rollout.backend: 'dask' is not one of"),
    ("train", ("nonsense",), 1, r"train: unknown key\(s\) \['nonsense'\]"),
    ("export", ("env", "task"), "fold_towels", r"export.env: unknown twin task 'fold_towels'"),
])
def test_bad_strings_types_and_keys_are_refused_naming_the_field(name, path, value, match):
    cls, data = _defaults(name)
    _set(data, path, value)
    tried.append(".".join((name, *path)))
    with pytest.raises(ConfigError, match=match):
        to_dataclass(cls, data, name)
    refused.append(".".join((name, *path)))


def test_an_entry_point_refuses_a_bad_value_before_any_work(tmp_path):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "pushcut.training.sft", "grad_clip=-1", f"demos_dir={tmp_path}/demos",
                        f"hydra.run.dir={run}"], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "sft.grad_clip: -1.0 is out of range: must be > 0" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "demos").exists() and not (run / "checkpoint").exists()  # no demo recorded, nothing trained


def _unspelled(cls, data, prefix="", nested=True):
    """Dotted names of ``cls``'s fields (with ``nested``, nested dataclasses' too) that ``data`` does not
    spell out."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name not in data:
            out.append(prefix + f.name)
        elif nested and dataclasses.is_dataclass(hints[f.name]) and data[f.name] is not None:
            out += _unspelled(hints[f.name], data[f.name], f"{prefix}{f.name}.")
    return out


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_every_field_is_in_the_yaml_so_the_command_line_can_set_it(name):
    """Hydra refuses ``key=value`` for a key its YAML lacks ("not in struct"), so every field is spelled out."""
    from omegaconf import OmegaConf

    cls, overrides = ENTRY_POINTS[name]
    missing = _unspelled(cls, OmegaConf.to_container(compose(name, overrides)))
    assert not missing, f"{name}: fields not in the YAML: {missing}"


@pytest.mark.parametrize("group", ["env", "policy"])
def test_every_env_and_policy_option_spells_out_every_field(group):
    """Top-level fields: a LIBERO env leaves the twin's randomisation block at ``enabled: false``."""
    from omegaconf import OmegaConf

    from pushcut.policy.config import PolicyConfig
    from pushcut.sim.config import EnvConfig

    cls = {"env": EnvConfig, "policy": PolicyConfig}[group]
    options = sorted((CONFIG_DIR / group).glob("*.yaml"))
    assert options
    missing = {p.stem: m for p in options
               if (m := _unspelled(cls, OmegaConf.to_container(OmegaConf.load(p)), nested=False))}
    assert not missing, f"configs/{group}/ options lacking fields: {missing}"
