"""Transcript renderings: json, verbose_json, text, srt, vtt, tsv (pure)."""

from collections.abc import Callable
from typing import Any

from whisper_api.errors import InvalidRequestError
from whisper_api.transcript import Segment, Transcript

FORMATS = ("json", "verbose_json", "text", "srt", "vtt", "tsv")


def render(transcript: Transcript, fmt: str) -> str | dict[str, Any]:
    if fmt not in FORMATS:
        raise InvalidRequestError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    renderers: dict[str, Callable[[Transcript], str | dict[str, Any]]] = {
        "json": to_json, "verbose_json": to_verbose_json, "text": to_text,
        "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv,
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
        "task": "transcribe", "language": t.language, "duration": round(t.duration_s, 3),
        "text": t.text, "segments": segments,
    }
    if "redone_regions" in t.extra:  # speech regions the worker decoded again (quality signal)
        body["redone_regions"] = t.extra["redone_regions"]
    words = [w for s in t.segments for w in s.words]
    if words:
        body["words"] = [
            {"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
            for w in words
        ]
    return body


def _verbose_segment(index: int, s: Segment) -> dict[str, Any]:
    return {
        "id": index, "seek": 0, "start": s.start, "end": s.end, "text": s.text, "tokens": [],
        "temperature": 0.0, "avg_logprob": round(s.avg_logprob, 4), "compression_ratio": 0.0,
        "no_speech_prob": round(s.no_speech_prob, 4),
    }


def to_text(t: Transcript) -> str:
    return t.text + "\n"


def to_srt(t: Transcript) -> str:
    cues = [
        f"{i}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{_cue_text(s.text)}\n"
        for i, s in enumerate(t.segments, start=1)
    ]
    return "\n".join(cues)


def to_vtt(t: Transcript) -> str:
    cues = [
        f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{_vtt_text(s.text)}\n"
        for s in t.segments
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


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
