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
