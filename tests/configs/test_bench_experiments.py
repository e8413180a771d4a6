"""bench-rl's experiments are Hydra configs: each composes, checks, and writes its own result file."""

import pytest

from bench.rl import BenchRLConfig
from pushcut.configs import CONFIG_DIR, ConfigError, compose, from_hydra


def _bench(*overrides):
    return from_hydra(BenchRLConfig, compose("bench_rl", list(overrides)))


def test_every_experiment_composes_and_names_its_result_file():
    names = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("rl_*.yaml"))
    assert "rl_recipe" in names and len(names) >= 3
    results = {n: _bench(f"experiment={n}").setup.result_name for n in names}
    assert results["rl_recipe"] == "rl" and _bench().setup.result_name == "rl"  # the default experiment
    assert len(set(results.values())) == len(names), results  # no two experiments share a file
    scratch = _bench("experiment=rl_scratch", "setup.demos=3", "budget_s=600", "variants=[grpo]")
    assert scratch.setup.result_name == "rl_3demos_scratch_lr0.001_seed0_nolate_nohorizon_eval3"
    assert scratch.budget_s == 600 and scratch.variants == ("grpo",)
    # another task: its file is rl_<task>.json, departures named from that task's own setup
    assert results["rl_stack_bowls_two"] == "rl_stack_bowls_two"
    assert _bench("experiment=rl_stack_bowls_two", "setup.seed=2").setup.result_name == "rl_stack_bowls_two_seed2"
    anchored = _bench("experiment=rl_stack_bowls_two", "setup.demos=200", "setup.temperature=1.0",
                      "setup.bc_coef=0.2", "setup.target_kl=0.02").setup
    assert anchored.result_name == "rl_stack_bowls_two_200demos_T1_bc0.2_kl0.02"
    assert {"temperature=1.0", "bc_coef=0.2", "target_kl=0.02"} <= set(anchored.overrides)
    # the twin tasks train randomised by default; the nominal twin is a named departure
    assert anchored.randomized and "env.randomization.enabled=true" in anchored.overrides
    nominal = _bench("experiment=rl_stack_bowls_two", "setup.randomized=false").setup
    assert nominal.result_name == "rl_stack_bowls_two_nominal"
    assert not [o for o in nominal.overrides if o.startswith("env.randomization")]
    with pytest.raises(ValueError, match="setup.base"):  # the base has seen stacking
        _bench("experiment=rl_stack_bowls_two", "setup.base=true")
    # the wrist cameras: the start reads them, training and the held-out seeds render them
    wrist = _bench("experiment=rl_stack_bowls_two", "setup.cameras=[head,left_wrist,right_wrist]").setup
    assert wrist.cameras == ("head", "left_wrist", "right_wrist")
    assert wrist.result_name == "rl_stack_bowls_two_head+left_wrist+right_wrist"
    assert "env.cameras=[head,left_wrist,right_wrist]" in wrist.overrides
    assert "cameras: [head, left_wrist, right_wrist]" in wrist.command
    assert not [o for o in anchored.overrides if o.startswith("env.cameras")]
    assert _bench("variants=[]").variants == ()  # the start alone
    # the trajectories behind each update: the train config's groups_per_iter
    wide = _bench("setup.groups=32").setup
    assert wide.result_name == "rl_groups32" and "groups_per_iter=32" in wide.overrides
    assert "groups_per_iter=8" in anchored.overrides


@pytest.mark.parametrize("override,match", [("variants=[greedy]", "variants"), ("setup.lr=fast", "setup.lr"),
                                            ("setup.horizon=ten", "setup.horizon"), ("setup.lr=-1", "setup.lr"),
                                            ("setup.late_fraction=1.5", "setup.late_fraction"),
                                            ("budget_s=0", "budget_s"), ("setup.cameras=[]", "setup.cameras"),
                                            ("setup.groups=0", "setup.groups"), ("gradient_noise=1", "gradient_noise")])
def test_bad_bench_settings_are_refused_naming_the_field(override, match):
    with pytest.raises((ConfigError, ValueError), match=match):
        _bench(override)


def test_a_killed_bench_resumes_its_unfinished_run_and_starts_after_a_finished_one(tmp_path):
    import json

    from bench.rl import run_dir

    def run(name, complete=None):
        path = tmp_path / name
        if complete is not None:
            (path / "checkpoint").mkdir(parents=True)
            meta = {"format": "pushcut-checkpoint", "version": 3, "job": "grpo", "complete": complete}
            (path / "checkpoint" / "meta.json").write_text(json.dumps(meta))
        else:
            path.mkdir()
        return path

    assert run_dir(tmp_path, "rl_x", "grpo").name.startswith("rl_x_grpo_")  # nothing yet: a new run
    unfinished = run("rl_x_grpo_100", complete=False)
    run("rl_x_grpo_200")  # killed before its first checkpoint: nothing to resume there
    run("rl_x_groups32_grpo_300", complete=False)  # another setting
    run("rl_x_temperature_1.0_150", complete=False)  # another variant
    assert run_dir(tmp_path, "rl_x", "grpo") == unfinished
    run("rl_x_grpo_400", complete=True)  # a finished run after it: the next bench starts afresh
    fresh = run_dir(tmp_path, "rl_x", "grpo")
    assert fresh.name.startswith("rl_x_grpo_") and not fresh.exists()
