"""The judge's rubric prompts (paper §3.2.2), by name.

The texts live in the core because the config validates ``reward.judge.prompts`` against these names and the
judge client (:mod:`rewards.judge`) renders them; placeholders: ``{n_clips} {question} {reference} {relevant}
{answer}``.
"""
from __future__ import annotations

# Two paraphrases of the paper's rubric (§3.2.2): factual correctness w.r.t. the clips + parsimony of clip usage.
PROMPTS: dict[str, tuple[str, str]] = {
    "rubric_a": (
        "You are a strict, impartial grader of answers to questions about several audio clips.",
        "You grade an answer to a question about {n_clips} audio clips (Audio 1 to Audio {n_clips}). You cannot "
        "hear the clips: the reference answer is correct, so judge the model answer against it.\n\n"
        "Question: {question}\n"
        "Reference answer: {reference}\n"
        "{relevant}"
        "Model answer: {answer}\n\n"
        "Rate the model answer from 1 to 5 on two criteria:\n"
        "1. Factual correctness with respect to the provided clips (as established by the reference answer).\n"
        "2. Parsimony of clip usage: the answer relies only on the clips that matter; penalise answers that rely "
        "on irrelevant clips, hedge between clips or list every clip.\n"
        "5 = correct and relies only on the relevant clips; 4 = correct with a minor slip or an unneeded clip; "
        "3 = partly correct; 2 = mostly wrong, or right only by hedging; 1 = wrong, empty or off-topic.\n"
        "Reply with the score only: one digit from 1 to 5.",
    ),
    "rubric_b": (
        "You evaluate responses of an audio assistant that listens to multiple audio recordings.",
        "An assistant listened to {n_clips} recordings and answered a question about them. Compare its response "
        "with the ground-truth answer, which you should trust.\n\n"
        "[Question]\n{question}\n\n"
        "[Ground-truth answer]\n{reference}\n\n"
        "{relevant}"
        "[Assistant response]\n{answer}\n\n"
        "Give one overall score on a 1-5 scale. Consider (a) whether the response is factually right about the "
        "recordings, and (b) whether it uses the recordings economically: citing recordings that are irrelevant "
        "to the question, or naming several in the hope one is right, must lower the score.\n"
        "Scale: 1 very poor, 2 poor, 3 acceptable, 4 good, 5 excellent (fully right, only relevant recordings).\n"
        "Output just the number (1, 2, 3, 4 or 5).",
    ),
}
