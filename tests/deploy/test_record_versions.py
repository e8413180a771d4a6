"""Records written by earlier pushcut versions stay readable; fixtures under tests/fixtures/records/
were written by the earlier code itself (the commit is in each file's name)."""

import json
from pathlib import Path

from pushcut.deploy.trials import TRIAL_VERSION, TrialLog, summarize

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "records"


def test_trial_rows_of_every_version_read_and_count(tmp_path):
    v1 = TrialLog(FIXTURES / "trials_v1_2c6ff94.jsonl").read()  # no version field
    assert [r["outcome"] for r in v1] == ["success", "failure", "timeout", "aborted", "success"]
    assert {r["version"] for r in v1} == {1}
    no_outcome = TrialLog(FIXTURES / "trials_v1_no_outcome.jsonl")  # task, trial and success alone
    rows = no_outcome.read()
    assert no_outcome.skipped == [] and [r["outcome"] for r in rows] == ["success", "failure", "success"]
    log = TrialLog(tmp_path / "trials.jsonl")
    log.path.write_bytes((FIXTURES / "trials_v1_no_outcome.jsonl").read_bytes())
    written = log.append({"task": "stack_bowls_two", "trial": log.next_trial("stack_bowls_two"), "outcome": "success"})
    assert written["version"] == TRIAL_VERSION and written["trial"] == 4
    s = summarize(log.read())["stack_bowls_two"]
    assert (s["trials"], s["successes"]) == (4, 3)  # the past trials count after an upgrade


def test_trial_rows_that_really_are_invalid_are_still_skipped_with_the_reason(tmp_path):
    log = TrialLog(tmp_path / "trials.jsonl")
    bad = [{"task": "t", "trial": 1, "success": "yes"},  # version 1 without outcome: success must be a bool
           {"version": 9, "task": "t", "trial": 2, "outcome": "success", "success": True},
           {"version": 2, "task": "t", "trial": 3, "success": True}]  # version 2 must carry its outcome
    log.path.write_text("".join(json.dumps(r) + "\n" for r in bad))
    assert log.read() == []
    reasons = [why for _, why in log.skipped]
    assert "outcome None" in reasons[0] and "row version 9; this pushcut reads [1, 2]" in reasons[1]
    assert "outcome None" in reasons[2]


def test_checkpoints_of_every_version_load(caplog):
    from pushcut.policy import checkpoint

    for name, version in (("checkpoint_v1_9504940", 1), ("checkpoint_v2_29e828d", 2)):
        model, *_, meta, _ = checkpoint.load(FIXTURES / name)
        assert meta["version"] == version and model.cfg.chunk_len == 4
        assert checkpoint.completion(meta) == (True, "step 8 of 8")  # an SFT run's steps tell
    assert "carries no file hashes" in caplog.text  # version 1 loads, and says what it cannot check


def test_a_signed_bundle_runs_and_one_written_before_signatures_is_refused_with_the_remedy():
    import numpy as np
    import pytest

    from pushcut.deploy.bundle import BundleError
    from pushcut.deploy.engine import Engine

    engine = Engine(FIXTURES / "bundle_v1_29e828d")
    obs = {"images": {c: np.zeros((32, 32, 3), np.uint8) for c in engine.cameras},
           "proprio": np.zeros(14, np.float32), "instruction": "click the bell"}
    assert engine.infer(obs).shape == (4, 14)
    with pytest.raises(BundleError, match="written before bundles were signed .* re-export it: pushcut-export "
                                          "checkpoint=.*checkpoint_v2_29e828d"):
        Engine(FIXTURES / "bundle_v1_unsigned_a3d729f")


def test_calibration_files_and_demos_of_version_1_load():
    from pushcut.calibration_files import load_arm, load_intrinsics
    from pushcut.sim import demos

    cam = load_intrinsics(FIXTURES / "camera_head_v1_2c6ff94.json")
    assert cam.camera == "head" and cam.K[0][0] == 600.0 and round(cam.fovy_deg, 1) == 43.6
    assert load_arm(FIXTURES / "arm_left_v1_2c6ff94.json").gripper_range_m == [0.0, 0.07]
    d = demos.load(FIXTURES / "demos_v1_29e828d" / "click_bell")
    assert d.meta["version"] == 1 and len(d.episodes) == 2 and d.episodes[0]["actions"].shape[1] == 14
