"""Transcript renderings: json, verbose_json, text, srt, vtt, tsv (pure)."""

import re
import unicodedata
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from whisper_api.errors import InvalidRequestError
from whisper_api.subtitles import Cue, SubtitleOptions, build_cues
from whisper_api.transcript import Segment, Transcript

FORMATS = ("json", "verbose_json", "text", "srt", "vtt", "tsv")
# Shaped from word timestamps: the pipeline computes them for these even when not asked.
SUBTITLE_FORMATS = ("srt", "vtt")


def render(
    transcript: Transcript, fmt: str, subtitles: SubtitleOptions | None = None
) -> str | dict[str, Any]:
    if fmt not in FORMATS:
        raise InvalidRequestError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt in SUBTITLE_FORMATS:
        cues = build_cues(transcript, subtitles or SubtitleOptions())
        return to_srt(cues) if fmt == "srt" else to_vtt(cues)
    renderers: dict[str, Callable[[Transcript], str | dict[str, Any]]] = {
        "json": to_json, "verbose_json": to_verbose_json, "text": to_text, "tsv": to_tsv,
    }
    return renderers[fmt](transcript)


def to_json(t: Transcript) -> dict[str, Any]:
    segments = [
        {"id": i, "start": s.start, "end": s.end, "text": s.text} for i, s in enumerate(t.segments)
    ]
    return {
        "text": t.text, "segments": segments, "language": t.language,
        "duration": round(t.duration_s, 3), **t.extra,
    }


def to_verbose_json(t: Transcript) -> dict[str, Any]:
    """OpenAI's shape: task, language, duration, text, segments, and words when present."""
    segments = [_verbose_segment(i, s) for i, s in enumerate(t.segments)]
    body: dict[str, Any] = {
        "task": t.extra.get("task", "transcribe"), "language": t.language,
        "language_probability": round(t.language_probability, 4),
        "duration": round(t.duration_s, 3),
        "text": t.text, "segments": segments,
    }
    if "redone_regions" in t.extra:  # speech regions the worker decoded again (quality signal)
        body["redone_regions"] = t.extra["redone_regions"]
    words = [(bare_word(w.word), w) for s in t.segments for w in s.words]
    if words:
        body["words"] = [
            {"word": text, "start": round(w.start, 3), "end": round(w.end, 3)}
            for text, w in words if text
        ]
    return body


def bare_word(word: str) -> str:
    """OpenAI's word entries carry no surrounding punctuation: ' so,' → 'so'; "don't" stays."""
    start, end = 0, len(word)
    while start < end and _punctuation_or_space(word[start]):
        start += 1
    while end > start and _punctuation_or_space(word[end - 1]):
        end -= 1
    return word[start:end]


def _punctuation_or_space(char: str) -> bool:
    # "%" is punctuation to Unicode but part of the word "5%".
    return char.isspace() or (unicodedata.category(char).startswith("P") and char != "%")


def _verbose_segment(index: int, s: Segment) -> dict[str, Any]:
    return {
        "id": index, "seek": 0, "start": s.start, "end": s.end,
        "text": s.text, "tokens": list(s.tokens), "temperature": s.temperature,
        "avg_logprob": round(s.avg_logprob, 4),
        "compression_ratio": round(s.compression_ratio, 4),
        "no_speech_prob": round(s.no_speech_prob, 4),
    }


def to_text(t: Transcript) -> str:
    return t.text + "\n"


def to_srt(cues: list[Cue]) -> str:
    blocks = [
        f"{i}\n{timestamp(c.start, ',')} --> {timestamp(c.end, ',')}\n"
        + "".join(_cue_text(line) + "\n" for line in c.lines)
        for i, c in enumerate(cues, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(cues: list[Cue]) -> str:
    blocks = [
        f"{timestamp(c.start, '.')} --> {timestamp(c.end, '.')}\n"
        + "".join(_vtt_text(line) + "\n" for line in c.lines)
        for c in cues
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_tsv(t: Transcript) -> str:
    """Whisper's tsv: integer milliseconds, tabs and newlines in text replaced by spaces."""
    rows = [
        f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{_one_line(s.text)}" for s in t.segments
    ]
    return "start\tend\ttext\n" + "".join(r + "\n" for r in rows)


def timestamp(seconds: float, decimal_marker: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cue_text(text: str) -> str:
    # A blank line would end the cue early; "-->" inside text would read as a timing line.
    return _one_line(text).replace("-->", "->")


def _vtt_text(text: str) -> str:
    escaped = _one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return escaped


def content_type(fmt: str) -> str:
    return {
        "json": "application/json", "verbose_json": "application/json",
        "text": "text/plain; charset=utf-8", "srt": "application/x-subrip; charset=utf-8",
        "vtt": "text/vtt; charset=utf-8", "tsv": "text/tab-separated-values; charset=utf-8",
    }[fmt]


EXTENSIONS = {"json": "json", "verbose_json": "json", "text": "txt", "srt": "srt", "vtt": "vtt",
              "tsv": "tsv"}
UNSAFE_NAME = re.compile(r"[^\w.\- ]+")


def needs_words(fmt: str) -> bool:
    """Subtitles are shaped from word timestamps, so they are computed even when not asked."""
    return fmt in SUBTITLE_FORMATS


def download_name(source: str | None, fmt: str) -> str:
    """`talk.mp3` → `talk.srt`; a URL gives its last path part; anything else `transcript`."""
    base = ""
    if source:
        url = urlsplit(source) if "://" in source else None
        path = url.path if url else source
        base = unquote(path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1])
        if url and base == "watch":  # YouTube's watch?v=ID: the video id names it
            base = parse_qs(url.query).get("v", [base])[0]
    stem = UNSAFE_NAME.sub("_", base.rsplit(".", 1)[0] if "." in base else base).strip(" ._")
    return f"{stem[:80] or 'transcript'}.{EXTENSIONS[fmt]}"


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback plus the UTF-8 name for clients that read `filename*`."""
    fallback = filename.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename)}"
