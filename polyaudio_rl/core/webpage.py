"""Self-contained HTML pages for people to listen to what a model heard and said: the run report
(:mod:`polyaudio_rl.report`), ``eval.bench``'s page and the ablation runner's page are built from these pieces.

A page needs no network: pictures are inlined (base64 PNG), clips are files beside the page in a content-addressed
store (:class:`ClipStore`, ``<dir>/<sha>.flac`` or ``.wav``; the same clip is stored once however often it appears),
and the filters are a few lines of plain JavaScript. Rows that carry ``data-task`` and ``data-verdict`` attributes are
shown or hidden by the page's two ``<select>`` filters; a rollout group (``.group``) is hidden when none of its rows
is visible. A clip whose file is missing is shown as a gap (``.gap``: the path that was expected), never as a broken
player.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

AUDIO_EXTS = (".flac", ".wav")


def esc(v: Any) -> str:
    """HTML-escaped text of ``v`` (None: an em dash)."""
    return "—" if v is None else html.escape(str(v), quote=True)


def fnum(v: Any, nd: int = 3) -> str:
    """A number for a table cell (``—`` for None / NaN / not a number)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "—"
    return "—" if f != f else f"{f:.{nd}f}"


class ClipStore:
    """Clips stored once, named by the content hash: ``root/<sha16>.flac`` (an array, 16-bit FLAC) or the file's own
    bytes (FLAC or WAV, kept as they are). ``put_*`` return the reference (the hash); :meth:`rel` the file's path
    relative to a page's folder, or None when the file is missing. ``also``: more folders looked in (read only)."""

    def __init__(self, root: str | Path, also: Sequence[str | Path] = ()):
        self.root = Path(root)
        self.also = [Path(a) for a in also]
        self.bytes_written = 0

    @staticmethod
    def array_ref(wave: np.ndarray, sample_rate: int) -> str:
        a = np.ascontiguousarray(np.asarray(wave, dtype=np.float32).reshape(-1))
        return hashlib.sha256(f"{int(sample_rate)}:".encode() + a.tobytes()).hexdigest()[:16]

    def _write(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp{os.getpid()}"
        tmp.write_bytes(data)
        os.replace(tmp, self.root / name)
        self.bytes_written += len(data)

    def put_array(self, wave: np.ndarray, sample_rate: int) -> str:
        import soundfile as sf

        ref = self.array_ref(wave, sample_rate)
        if self.path(ref) is None:
            a = np.clip(np.asarray(wave, dtype=np.float32).reshape(-1), -1.0, 1.0)
            buf = io.BytesIO()
            sf.write(buf, a, int(sample_rate), format="FLAC", subtype="PCM_16")
            self._write(f"{ref}.flac", buf.getvalue())
        return ref

    def put_bytes(self, data: bytes) -> str:
        """A FLAC or WAV file's bytes, stored as they are (other formats: decoded and stored as FLAC)."""
        ref = hashlib.sha256(data).hexdigest()[:16]
        if self.path(ref) is not None:
            return ref
        if data[:4] == b"fLaC":
            self._write(f"{ref}.flac", data)
        elif data[:4] == b"RIFF" and data[8:12] == b"WAVE":
            self._write(f"{ref}.wav", data)
        else:
            import soundfile as sf

            wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
            buf = io.BytesIO()
            sf.write(buf, np.clip(wave, -1, 1), sr, format="FLAC", subtype="PCM_16")
            self._write(f"{ref}.flac", buf.getvalue())
        return ref

    def path(self, ref: str) -> Path | None:
        for root in (self.root, *self.also):
            for ext in AUDIO_EXTS:
                p = root / f"{ref}{ext}"
                if p.is_file():
                    return p
        return None

    def rel(self, ref: str, page_dir: str | Path) -> str | None:
        p = self.path(ref)
        return None if p is None else os.path.relpath(p, page_dir).replace(os.sep, "/")


def clip_cell(store: ClipStore, refs: Sequence[str], page_dir: str | Path) -> str:
    """One ``<audio>`` player per clip, labelled "Audio i"; a missing clip file is a visible gap."""
    parts = []
    for i, ref in enumerate(refs, 1):
        rel = store.rel(ref, page_dir)
        if rel is None:
            parts.append(f'<div class="clip gap" title="missing file">Audio {i}: clip {esc(ref)} missing '
                         f'(expected in {esc(store.root.name)}/)</div>')
        else:
            parts.append(f'<div class="clip">Audio {i} <audio controls preload="metadata" src="{esc(rel)}"></audio>'
                         "</div>")
    return "".join(parts) or '<div class="gap">no clips recorded</div>'


def inline_png(path: str | Path, alt: str) -> str:
    """An ``<img>`` with the PNG inlined, or a gap naming the missing file."""
    p = Path(path)
    if not p.is_file():
        return f'<p class="gap">picture {esc(p.name)} missing</p>'
    data = base64.b64encode(p.read_bytes()).decode()
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}"><figcaption>{esc(alt)}</figcaption></figure>'


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    """A plain table; cells are escaped unless they are :class:`Raw`."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class Raw(str):
    """HTML that a cell takes as it is (built by these helpers, already escaped)."""


def cell(v: Any) -> str:
    return str(v) if isinstance(v, Raw) else esc(v)


def row(cells: Sequence[Any], task: str = "", verdict: str = "") -> str:
    """A filterable table row (``data-task``, ``data-verdict`` = right | wrong | none)."""
    tds = "".join(f"<td>{cell(c)}</td>" for c in cells)
    return f'<tr class="item" data-task="{esc(task)}" data-verdict="{esc(verdict or "none")}">{tds}</tr>'


def verdict_of(score: Any) -> str:
    """right (rule score >= 0.5), wrong, or none (not scored)."""
    try:
        return "right" if float(score) >= 0.5 else "wrong"
    except (TypeError, ValueError):
        return "none"


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em auto;max-width:1250px;padding:0 1em;color:#1a202c}
h1{font-size:1.5em}h2{border-bottom:1px solid #cbd5e0;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #cbd5e0;padding:3px 7px;vertical-align:top}
th{background:#edf2f7;text-align:left}td.num{text-align:right}
audio{height:28px;width:210px;vertical-align:middle}.clip{white-space:nowrap;margin:1px 0}
.gap{color:#9b2c2c;background:#fff5f5;padding:2px 6px;border:1px dashed #e53e3e}
.right{color:#22543d;font-weight:600}.wrong{color:#9b2c2c;font-weight:600}
.group{border:1px solid #a0aec0;border-radius:6px;padding:.4em .8em;margin:.8em 0}
.group h3{margin:.2em 0;font-size:1.05em}.completion{font-family:ui-monospace,monospace;white-space:pre-wrap}
figure{display:inline-block;margin:.3em}img{max-width:600px;border:1px solid #e2e8f0}
#filters{position:sticky;top:0;background:#fff;padding:.4em 0;border-bottom:1px solid #e2e8f0;z-index:1}
#shown{color:#4a5568;margin-left:1em}
"""

FILTER_JS = """
function applyFilters(){
  var t=document.getElementById('f-task').value, v=document.getElementById('f-verdict').value, n=0;
  document.querySelectorAll('tr.item').forEach(function(r){
    var ok=(t===''||r.dataset.task===t)&&(v===''||r.dataset.verdict===v);
    r.style.display=ok?'':'none'; if(ok) n++;});
  document.querySelectorAll('.group').forEach(function(g){
    var any=Array.prototype.some.call(g.querySelectorAll('tr.item'),function(r){return r.style.display!=='none';});
    g.style.display=any?'':'none';});
  document.getElementById('shown').textContent=n+' rows shown';
}
document.getElementById('f-task').addEventListener('change',applyFilters);
document.getElementById('f-verdict').addEventListener('change',applyFilters);
applyFilters();
"""


VERDICTS = ("right", "wrong", "none")
VERDICT_LABELS = {"none": "not scored"}


def filters(tasks: Sequence[str], verdicts: Sequence[str] = VERDICTS) -> str:
    opts = "".join(f'<option value="{esc(t)}">{esc(t)}</option>' for t in tasks)
    vopts = "".join(f'<option value="{esc(v)}">{esc(VERDICT_LABELS.get(v, v))}</option>' for v in verdicts)
    return ('<div id="filters">Task <select id="f-task"><option value="">all</option>' + opts + "</select> "
            f'Answer <select id="f-verdict"><option value="">all</option>{vopts}</select>'
            '<span id="shown"></span></div>')


def page(title: str, body: Sequence[str], tasks: Sequence[str], verdicts: Sequence[str] = VERDICTS) -> str:
    """The whole document: the filter bar (tasks in the given order), the body sections, the filter script."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(title)}</h1>{filters(tasks, verdicts)}{''.join(body)}<script>{FILTER_JS}</script>"
            "</body></html>\n")


def write_page(path: str | Path, title: str, body: Sequence[str], tasks: Sequence[str],
               verdicts: Sequence[str] = VERDICTS) -> Path:
    """Write the page atomically; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(page(title, body, tasks, verdicts), encoding="utf-8")
    os.replace(tmp, path)
    return path


def dir_bytes(paths: Iterable[str | Path]) -> int:
    """Total size of the given files and folders (what a page needs beside it)."""
    total = 0
    for p in map(Path, paths):
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total
