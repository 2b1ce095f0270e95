"""Batches in flight at a stop, as plain data: kept in a checkpoint, replayed by the run that resumes from it.

At policy lag k ≥ 1 the version gate lets the batches of the next k steps be sampled from policies older than the
learner's. A stop (SIGTERM) at a step that is not a checkpoint step writes a checkpoint the undisturbed run did not
have; sampling those batches again from the checkpoint's policy would make the resumed run differ from the
undisturbed one. So the checkpoint keeps them (``client_state["inflight"]``, JSON inside the checksummed
``trainer_state.json``): per group its id, sample id, how many versions behind the learner's policy it was sampled,
and its completions (token ids, behaviour log-probs, finish reasons, texts). The resumed run re-reads the same prompts
from the stream, checks that they are the kept groups, and re-scores the kept completions
(:meth:`polyaudio_rl.driver.GRPODriver.inflight_batches` chooses which batches; this module only converts).
"""
from __future__ import annotations

from typing import Any, Sequence


def batch_record(step: int, groups: Sequence[Any], version: int) -> dict[str, Any]:
    """The batch of ``step`` (its :class:`~actors.rollout_engine.RolloutGroup` s) as JSON-ready data, each group's
    policy version stored as how far it is behind ``version``, the learner's policy at the stop."""
    return {"step": step, "groups": [{
        "group_id": g.group_id, "sample_id": g.sample_id, "behind": version - g.policy_version,
        "num_prompt_tokens": g.num_prompt_tokens, "actor": g.actor,
        "completions": [{"token_ids": list(c.token_ids), "logprobs": [float(x) for x in c.logprobs],
                         "finish_reason": c.finish_reason, "text": c.text} for c in g.completions],
    } for g in groups]}


def replayed_groups(record: dict[str, Any], group_ids: Sequence[str], first_version: int) -> list[Any]:
    """The groups of a kept batch (:func:`batch_record`), tagged with the policy version as many versions behind
    ``first_version`` (the resumed pipeline's first policy) as they were behind the stopped run's checkpoint.
    ``group_ids`` are the groups the data stream gives for that step now: any difference is an error naming the
    step (the run's data changed since it was stopped), never a silent mix of two batches."""
    from actors.rollout_engine import Completion, RolloutGroup

    kept = [grp["group_id"] for grp in record["groups"]]
    if kept != list(group_ids):
        raise RuntimeError(f"the checkpoint's in-flight batch of step {record['step']} holds groups {kept[:3]}…, "
                           f"the data stream gives {list(group_ids)[:3]}…: the run's data changed since it was stopped")
    return [RolloutGroup(grp["group_id"], grp["sample_id"], first_version - int(grp["behind"]),
                         [Completion(list(c["token_ids"]), list(c["logprobs"]), c["finish_reason"], c["text"])
                          for c in grp["completions"]], int(grp["num_prompt_tokens"]), int(grp["actor"]))
            for grp in record["groups"]]
