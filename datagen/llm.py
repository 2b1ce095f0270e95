"""Optional LLM authoring through any OpenAI-compatible endpoint, with the paper's prompts and checks.

The paper authors scripts and QAs with GPT-5 / GPT-OSS-120B (§3.2.1) using the prompts of Figures 2-10. Here
Figure 7 (multi-audio entailment) and Figure 3 (factual consistency) drive generators; every reply is checked as
the paper says (strict JSON, speaker whitelist, labelled TTS instructions, verbatim evidence quotes, at least half
of the QAs using >= 2 clips, answers starting with "Yes, " / "No, " / "Not enough information, "). A rejected reply
is retried up to ``llm.max_retries`` times, then the item fails with reason "llm reply rejected" (the builder
retries it with a new seed, then skips and counts it). Offline default: the template generators.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter

from .audio import SourceError
from .sources.speech import OPENAI_VOICES, stable_hash

WHITELIST = tuple(OPENAI_VOICES)

# Figure 7: Audio Entailment Script and QA Generation (verbatim rules; K fixed by the caller).
FIG7_SYSTEM = (
    "You generate compact JSON datapoints for Multi-Audio Entailment. Each datapoint has 3-5 short single-speaker "
    "clips, each with a short TTS instructions block, and 5-7 QAs that sometimes require integrating multiple clips. "
    "Use only fictional content. Output strictly valid JSON."
)
FIG7_USER = """Generate one dataset example.

Rules
- Clips: choose K = {k}. Each clip has exactly one speaker, a short transcript (~8-20s worth of text), and an instructions string for TTS.
- Speaker whitelist (lowercase, exact): alloy, ash, ballad, coral, echo, fable, nova, onyx, sage, shimmer.
- Use one of these per clip (you may reuse names across clips). No other names.
- TTS instructions (per clip): provide a single string with exactly these labeled lines (capitalize labels):
 - Voice: ...
 - Tone: ...
 - Punctuation: ...
 - Delivery: ...
Keep each line concise. No quotes, emojis, or stage directions. Use \\n\\n between lines.
- Content: across clips, include at least one fact that is supported in one clip and contradicted in another (day/time, quantity, inclusion/exclusion). Add 1-2 neutral/distractor details.
- QAs: produce 5-7 items. For each QA:
 - uses: the minimal set of clip_ids needed (>= 2 for at least half the QAs).
 - evidence_quotes: 1-2 short verbatim substrings from the referenced clips.
 - answer: a natural-language sentence that begins with "Yes, ...", "No, ...", or "Not enough information, ...", consistent with the union of the uses clips.
 - Language: English, TTS-friendly (no URLs/emojis; no sound stage directions).
 - Keep everything concise and consistent. No contradictory QAs.

Return exactly this JSON shape (no extra keys):
{{"datapoint_id": "string", "scenario": "string",
  "clips": [{{"clip_id": "A1", "speaker": "alloy|ash|ballad|coral|echo|fable|nova|onyx|sage|shimmer",
             "instructions": "Voice: ...\\n\\nTone: ...\\n\\nPunctuation: ...\\n\\nDelivery: ...",
             "transcript": "Plain text monologue. No timestamps. TTS-friendly."}}],
  "qa": [{{"qid": "Q1", "question": "string", "uses": ["A1", "A3"],
          "evidence_quotes": [{{"clip_id": "A1", "quote": "verbatim phrase"}}],
          "answer": "Yes, ... / No, ... / Not enough information, ..."}}]}}"""

# Figure 3: Factual Consistency Across Multiple Audios.
FIG3_SYSTEM = (
    "You are a careful data author for a factual consistency task with multiple audio clips. "
    "Generate ONE concise factual claim (<= 20 words) and K short scripts (6-15 words each). "
    "Each script should sound natural when read aloud. The claim must be grounded only in the scripts you produce. "
    "If the target label is 'Yes', all scripts must support the claim. If 'No', make at least one script contradict "
    "or fail to support the claim.\n\n"
    "Output STRICT JSON with this schema:\n"
    '  {\n    "claim": string,\n    "label": "Yes" | "No", \n    "clips": [ {\n      "support": boolean,\n'
    '      "text": string,\n      "style": string\n    } ... K items ],\n    "rationale": string (<= 25 words)\n  }\n'
)
FIG3_USER = "K = {k}. Target label: {label}. Topic: {topic}."

ANSWER_PREFIXES = ("Yes, ", "No, ", "Not enough information, ")
_LABELS = ("Voice:", "Tone:", "Punctuation:", "Delivery:")


class ReplyRejected(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def parse_json(text: str) -> dict:
    t = text.strip()
    m = re.match(r"^```(?:json)?\s*(.*?)\s*```$", t, re.S)
    if m:
        t = m.group(1)
    try:
        obj = json.loads(t)
    except json.JSONDecodeError as exc:
        raise ReplyRejected("invalid JSON", str(exc)) from exc
    if not isinstance(obj, dict):
        raise ReplyRejected("invalid JSON", "top level is not an object")
    return obj


def check_entailment(obj: dict, k: int) -> dict:
    """Figure 7's checks. Returns obj or raises ReplyRejected naming the failed check."""
    clips, qas = obj.get("clips"), obj.get("qa")
    if not isinstance(clips, list) or not isinstance(qas, list):
        raise ReplyRejected("wrong JSON shape", "need 'clips' and 'qa' lists")
    if len(clips) != k:
        raise ReplyRejected("wrong clip count", f"{len(clips)} clips, asked for {k}")
    ids = {}
    for c in clips:
        if not isinstance(c, dict) or not {"clip_id", "speaker", "instructions", "transcript"} <= set(c):
            raise ReplyRejected("wrong JSON shape", f"clip {c!r:.80}")
        if c["speaker"] not in WHITELIST:
            raise ReplyRejected("speaker not in whitelist", repr(c["speaker"]))
        if not all(lab in c["instructions"] for lab in _LABELS):
            raise ReplyRejected("TTS instructions lack labelled lines", c["clip_id"])
        if not str(c["transcript"]).strip():
            raise ReplyRejected("empty transcript", c["clip_id"])
        ids[c["clip_id"]] = c["transcript"]
    if not 1 <= len(qas) <= 7:
        raise ReplyRejected("wrong QA count", str(len(qas)))
    multi = 0
    for q in qas:
        if not isinstance(q, dict) or not {"question", "uses", "evidence_quotes", "answer"} <= set(q):
            raise ReplyRejected("wrong JSON shape", f"qa {q!r:.80}")
        if not q["uses"] or any(u not in ids for u in q["uses"]):
            raise ReplyRejected("QA uses unknown clip", str(q["uses"]))
        for ev in q["evidence_quotes"]:
            if ev.get("clip_id") not in ids or ev.get("quote", "") not in ids[ev["clip_id"]]:
                raise ReplyRejected("evidence quote not verbatim", f"{ev!r:.100}")
        if not str(q["answer"]).startswith(ANSWER_PREFIXES):
            raise ReplyRejected("answer prefix", f"{q['answer']!r:.60}")
        multi += len(set(q["uses"])) >= 2
    if multi * 2 < len(qas):
        raise ReplyRejected("fewer than half the QAs use >= 2 clips", f"{multi}/{len(qas)}")
    return obj


def check_factual(obj: dict, k: int, label: str) -> dict:
    if not isinstance(obj.get("clips"), list) or "claim" not in obj or "label" not in obj:
        raise ReplyRejected("wrong JSON shape", "need claim, label, clips")
    if obj["label"] != label:
        raise ReplyRejected("label differs from the target", f"{obj['label']!r} != {label!r}")
    if len(obj["clips"]) != k:
        raise ReplyRejected("wrong clip count", f"{len(obj['clips'])} != {k}")
    sup = [bool(c.get("support")) for c in obj["clips"]]
    if (label == "Yes") != all(sup):
        raise ReplyRejected("support flags disagree with the label", str(sup))
    for c in obj["clips"]:
        if not str(c.get("text", "")).strip():
            raise ReplyRejected("empty script")
    return obj


class LLMAuthor:
    """Chat completions with bounded retries; counts rejected replies by reason (``stats``)."""

    def __init__(self, base_url: str, model: str, api_key: str = "none", max_retries: int = 3,
                 temperature: float = 0.9, timeout_s: float = 120.0):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=0)
        self.model, self.max_retries, self.temperature = model, max_retries, temperature
        self.stats: Counter = Counter()

    @classmethod
    def from_config(cls, cfg) -> "LLMAuthor":
        c = cfg.llm
        return cls(c.base_url, c.model, os.environ.get(c.api_key_env, "none"), c.max_retries, c.temperature,
                   c.timeout_s)

    def author(self, system: str, user: str, check, seed: int) -> dict:
        last = ""
        for attempt in range(self.max_retries):
            try:
                r = self.client.chat.completions.create(
                    model=self.model, temperature=self.temperature, seed=(seed + attempt) % (1 << 31),
                    messages=[{"role": "system", "content": system}, {"role": "user", "content": user}])
                text = r.choices[0].message.content or ""
            except Exception as exc:  # transport errors count like a bad reply
                self.stats["request failed"] += 1
                last = f"request failed: {exc}"
                continue
            try:
                return check(parse_json(text))
            except ReplyRejected as exc:
                self.stats[exc.reason] += 1
                last = str(exc)
        raise SourceError("llm reply rejected", f"{self.max_retries} attempts; last: {last}")


def _speaker_for(ctx, voice: str):
    """The voice the LLM chose: itself with the OpenAI backend, else a fixed local stand-in of this split."""
    for s in ctx.speakers:
        if s.engine == "openai" and s.voice == voice:
            return s
    local = [s for s in ctx.speakers if s.engine != "openai"]
    return local[stable_hash("voice", voice) % len(local)]


def authored_entailment(ctx, rng, n: int):
    from .tasks.base import Draft

    seed = int(rng.integers(1 << 31))
    obj = ctx.author.author(FIG7_SYSTEM, FIG7_USER.format(k=n), lambda o: check_entailment(o, n), seed)
    idx = {c["clip_id"]: i for i, c in enumerate(obj["clips"], 1)}
    clips = []
    for c in obj["clips"]:
        sp = _speaker_for(ctx, c["speaker"])
        sents = [s for s in re.split(r"(?<=[.!?])\s+", c["transcript"].strip()) if s]
        instr = c["instructions"] if sp.engine == "openai" else None  # Figure 7's block, sent to the TTS
        clips.append(ctx.speech(sp, sents, None, instructions=instr, llm_speaker=c["speaker"]))
    qas = sorted(obj["qa"], key=lambda q: -len(set(q["uses"])))
    qa = qas[int(rng.integers(max(1, sum(len(set(q["uses"])) >= 2 for q in qas))))]
    label = next(p for p in ANSWER_PREFIXES if qa["answer"].startswith(p)).rstrip(", ")
    rel = sorted({idx[u] for u in qa["uses"]})
    return Draft(clips, qa["question"], qa["answer"], {"type": "yesno", "value": label}, rel,
                 extra={"authored_by": ctx.author.model, "scenario": obj.get("scenario", ""),
                        "evidence": qa["evidence_quotes"]})


def authored_factual(ctx, rng, n: int):
    from .tasks.base import Draft

    label = "Yes" if rng.random() < 0.5 else "No"
    topic = ctx.lex.pick(rng, sorted(ctx.lex.topics))
    seed = int(rng.integers(1 << 31))
    obj = ctx.author.author(FIG3_SYSTEM, FIG3_USER.format(k=n, label=label, topic=topic),
                            lambda o: check_factual(o, n, label), seed)
    speakers = ctx.pick_speakers(rng, n)
    clips = [ctx.speech(sp, [c["text"].strip()], rng, style=c.get("style", ""), supports=bool(c.get("support")))
             for sp, c in zip(speakers, obj["clips"])]
    q = f"Do all of the clips support the claim '{obj['claim']}'?"
    bad = [i for i, c in enumerate(obj["clips"], 1) if not c.get("support")]
    ans = ("Yes, every clip supports the claim." if label == "Yes" else
           f"No, {', '.join(f'clip {i}' for i in bad)} {'does' if len(bad) == 1 else 'do'} not support it.")
    return Draft(clips, q, ans, {"type": "yesno", "value": label}, list(range(1, n + 1)),
                 extra={"authored_by": ctx.author.model, "claim": obj["claim"], "rationale": obj.get("rationale", "")})
