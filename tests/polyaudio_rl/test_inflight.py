"""A batch kept at a stop survives the JSON round trip of trainer_state.json and comes back as far behind as it was."""
import json

import pytest

from actors.rollout_engine import Completion, RolloutGroup
from polyaudio_rl.inflight import batch_record, replayed_groups


def _groups(version):
    return [RolloutGroup(f"4:{i}:s{i}", f"s{i}", version, [
        Completion([5, 7, 2], [-0.1, -2.5e-9, float("-inf")], "stop", "Clip 2."),
        Completion([9], [-1 / 3], "length", "3")], 11, i) for i in range(2)]


@pytest.mark.parametrize("sampled_by, learner_at, resumed_first, want_version, want_behind", [
    (7, 8, 20, 19, 1),    # one version behind at the stop: one behind the resumed pipeline's first policy
    (6, 8, 20, 18, 2),    # lag 2
    (8, 8, 3, 3, 0),      # sampled by the stop's own policy (kept only by a caller that chose to)
])
def test_a_kept_batch_round_trips_with_its_lag(sampled_by, learner_at, resumed_first, want_version, want_behind):
    orig = _groups(sampled_by)
    rec = json.loads(json.dumps(batch_record(4, orig, learner_at)))  # as trainer_state.json stores it
    assert rec["step"] == 4 and [g["behind"] for g in rec["groups"]] == [want_behind] * 2
    again = replayed_groups(rec, [g.group_id for g in orig], resumed_first)
    assert [g.policy_version for g in again] == [want_version] * 2
    for a, b in zip(again, orig):
        assert (a.group_id, a.sample_id, a.num_prompt_tokens, a.actor) == (b.group_id, b.sample_id, 11, b.actor)
        assert [(c.token_ids, c.logprobs, c.finish_reason, c.text) for c in a.completions] == \
            [(c.token_ids, c.logprobs, c.finish_reason, c.text) for c in b.completions]


def test_other_groups_from_the_stream_are_an_error_naming_the_step():
    rec = batch_record(4, _groups(7), 8)
    with pytest.raises(RuntimeError, match=r"in-flight batch of step 4 .*data changed since it was stopped"):
        replayed_groups(rec, ["4:0:s0", "4:1:other"], 20)
    with pytest.raises(RuntimeError, match="step 4"):
        replayed_groups(rec, ["4:0:s0"], 20)  # a group missing
