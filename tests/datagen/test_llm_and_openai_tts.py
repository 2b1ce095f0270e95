"""LLM authoring and the OpenAI-compatible TTS backend against a real local HTTP server (127.0.0.1).

The server speaks the OpenAI wire format: /v1/chat/completions replays scripted replies (invalid JSON, a speaker
outside the whitelist, then a valid Figure 7 datapoint), and /v1/audio/speech synthesises real speech with
espeak-ng (one espeak voice per OpenAI voice name) and returns WAV bytes.
"""
from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from datagen.__main__ import load_config
from datagen.generate import make_item
from datagen.llm import LLMAuthor, ReplyRejected, check_entailment, parse_json
from datagen.sources.speech import SpeechSynth, roster
from datagen.tasks.base import Context

VOICE_MAP = {"alloy": "en-us+f3", "ash": "en-us+m3", "ballad": "en-gb+m1", "coral": "en-gb+f2", "echo": "en-029+m2",
             "fable": "en-gb-scotland+m7", "nova": "en-029+f5", "onyx": "en-gb-x-rp+m4", "sage": "en-us+f4",
             "shimmer": "en-gb-x-gbclan+f1"}

INS = "Voice: Warm\n\nTone: Calm\n\nPunctuation: Clear\n\nDelivery: Steady"
VALID = {
    "datapoint_id": "d1", "scenario": "a village fair",
    "clips": [
        {"clip_id": "A1", "speaker": "nova", "instructions": INS,
         "transcript": "The fair opens on Friday at ten. There will be twelve stalls."},
        {"clip_id": "A2", "speaker": "onyx", "instructions": INS,
         "transcript": "I heard the fair was moved to Saturday. The band plays at noon."},
        {"clip_id": "A3", "speaker": "sage", "instructions": INS,
         "transcript": "Bring a blanket for the picnic. Parking is free all day."},
    ],
    "qa": [
        {"qid": "Q1", "question": "Do the clips agree on the day of the fair?", "uses": ["A1", "A2"],
         "evidence_quotes": [{"clip_id": "A1", "quote": "opens on Friday"},
                             {"clip_id": "A2", "quote": "moved to Saturday"}],
         "answer": "No, the first clip says Friday while the second says Saturday."},
        {"qid": "Q2", "question": "Is parking free and are there twelve stalls?", "uses": ["A1", "A3"],
         "evidence_quotes": [{"clip_id": "A3", "quote": "Parking is free"}],
         "answer": "Yes, parking is free and there will be twelve stalls."},
        {"qid": "Q3", "question": "Does the band play at noon?", "uses": ["A2"],
         "evidence_quotes": [{"clip_id": "A2", "quote": "The band plays at noon"}],
         "answer": "Yes, the band plays at noon."},
    ],
}


class Handler(BaseHTTPRequestHandler):
    replies: list[str] = []
    calls: list[dict] = []

    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({"path": self.path, **body})
        if self.path.endswith("/audio/speech"):
            if body["voice"] not in VOICE_MAP:
                return self._send(400, b'{"error": "unknown voice"}', "application/json")
            wav = subprocess.run(["espeak-ng", "-v", VOICE_MAP[body["voice"]], "--stdout", body["input"]],
                                 capture_output=True, check=True).stdout
            return self._send(200, wav, "audio/wav")
        content = type(self).replies.pop(0) if type(self).replies else "still not json"
        out = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content}}],
               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        self._send(200, json.dumps(out).encode(), "application/json")

    def _send(self, code, data, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_figure7_checks():
    check_entailment(json.loads(json.dumps(VALID)), 3)
    bad = json.loads(json.dumps(VALID))
    bad["qa"][0]["evidence_quotes"][0]["quote"] = "opens on Sunday"
    with pytest.raises(ReplyRejected, match="verbatim"):
        check_entailment(bad, 3)
    bad = json.loads(json.dumps(VALID))
    bad["qa"][1]["answer"] = "Sure, it is."
    with pytest.raises(ReplyRejected, match="prefix"):
        check_entailment(bad, 3)
    bad = json.loads(json.dumps(VALID))
    bad["qa"][1]["uses"] = ["A3"]
    with pytest.raises(ReplyRejected, match="half"):
        check_entailment(bad, 3)
    with pytest.raises(ReplyRejected, match="invalid JSON"):
        parse_json("{oops")
    assert parse_json("```json\n{\"a\": 1}\n```") == {"a": 1}


def test_llm_authoring_retries_then_succeeds(server):
    bad_speaker = json.loads(json.dumps(VALID))
    bad_speaker["clips"][0]["speaker"] = "bob"
    Handler.replies = ["this is not JSON", json.dumps(bad_speaker), "```json\n" + json.dumps(VALID) + "\n```"]
    cfg = load_config(None, ["llm={enabled: true, base_url: '%s', max_retries: 3}" % server])
    ctx = Context(cfg, "train")
    ctx.author = LLMAuthor.from_config(cfg)
    r = make_item(ctx, "entailment", 1)  # index 1 -> 3 clips
    assert r.sample is not None, r.detail
    s = r.sample
    assert ctx.author.stats == {"invalid JSON": 1, "speaker not in whitelist": 1}
    assert s.key["type"] == "yesno" and s.answer.startswith(s.key["value"])
    assert len(s.clips) == 3 and min(s.relevant_clips) >= 1 and len(s.relevant_clips) == 2
    assert [m["llm_speaker"] for m in s.metadata["clips"]] == ["nova", "onyx", "sage"]
    assert s.metadata["clips"][0]["transcript"] == VALID["clips"][0]["transcript"]
    # an endpoint that never answers well: the item is skipped with the reason, not a crash
    Handler.replies = []
    r = make_item(ctx, "entailment", 5)
    assert r.sample is None and r.reason == "llm reply rejected" and "invalid JSON" in r.detail


def test_openai_tts_backend(server):
    cfg = load_config(None, ["speech_engines=[openai]", f"openai_tts={{base_url: '{server}'}}"])
    speakers = roster(cfg)
    assert sorted(s.voice for s in speakers) == sorted(VOICE_MAP)
    synth = SpeechSynth.from_config(cfg)
    Handler.calls.clear()
    ctx = Context(cfg, "bench")
    r = make_item(ctx, "needle_qa", 2)
    assert r.sample is not None, r.detail
    calls = [c for c in Handler.calls if c["path"].endswith("/audio/speech")]
    assert len(calls) >= 4 and all(c["instructions"].startswith("Voice: ") for c in calls)
    assert {c["voice"] for c in calls} <= {s.voice for s in ctx.speakers}
    assert all(m["engine"] == "openai" and "Delivery:" in m["instructions"] for m in r.sample.metadata["clips"])
    x = synth.say(speakers[0], "Hello there, this is a test.")
    assert x.size > 8000
    from datagen.sources.speech import Speaker

    with pytest.raises(Exception, match="HTTP 400"):
        synth.say(Speaker("openai:zed", "openai", "zed", "male", ""), "hello")
