"""Bad configs fail with a message that names the field."""

import pytest

from pushcut.configs import ConfigError, compose, from_hydra, to_dataclass
from pushcut.sim.config import EnvConfig
from pushcut.sim.demos import DemosConfig


def test_composed_default_loads():
    cfg = from_hydra(DemosConfig, compose("demos"))
    assert cfg.env.task == "click_bell" and cfg.env.kind == "twin"


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["env.task=fly_to_moon"], r"config\.env: unknown twin task 'fly_to_moon'"),
        (["env.cameras=[head,belly]"], r"config\.env: unknown camera\(s\) \['belly'\]"),
        (["num_episodes=-3"], r"config\.num_episodes: -3 is out of range: must be >= 1"),
        (["env.image_size=[64,-1]"], r"config\.env\.image_size: \(64, -1\) is out of range: must be >= 1"),
        (["env.max_steps=abc"], r"config\.env\.max_steps: .*abc"),
        (["env.randomization.latency_steps=-1"], r"config\.env\.randomization\.latency_steps: -1 is out of range"),
    ],
)
def test_bad_values_name_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        from_hydra(DemosConfig, compose("demos", overrides))


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigError, match=r"config\.env: unknown key\(s\) \['colour'\]"):
        to_dataclass(DemosConfig, {"env": {"task": "click_bell", "colour": "red"}})
    with pytest.raises(Exception, match="colour"):
        compose("demos", ["env.colour=red"])  # Hydra's struct mode rejects it too


def test_types_are_checked():
    with pytest.raises(ConfigError, match=r"config\.physics_hz: expected an integer"):
        to_dataclass(EnvConfig, {"physics_hz": 2.5})
    with pytest.raises(ConfigError, match=r"config\.randomization\.enabled: expected true/false"):
        to_dataclass(EnvConfig, {"randomization": {"enabled": "yes"}})


def test_libero_config_checks_cameras():
    with pytest.raises(ConfigError, match="unknown camera"):
        to_dataclass(EnvConfig, {"kind": "libero", "task": "libero_10", "cameras": ["head"]})


def test_env_records_written_before_a_rename_read_under_todays_names():
    """Checkpoints store their run's env config; one written when the action rate was ``control_hz``
    reads as ``action_hz`` (its bundle's action contract and bc_coef's demos depend on it)."""
    from pushcut.sim.config import read_env

    env = read_env({"kind": "twin", "task": "stack_bowls_two", "control_hz": 20, "physics_hz": 500})
    assert env.action_hz == 20 and env.substeps == 25 and env.speed_percent == 100
    with pytest.raises(ValueError, match="no_such_field"):
        read_env({"task": "click_bell", "no_such_field": 1}, "checkpoint config.json run.env")
