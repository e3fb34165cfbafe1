"""Transcript renderings in whisper_api.formats."""

import pytest

from whisper_api.errors import InvalidRequestError
from whisper_api.formats import (
    FORMATS,
    bare_word,
    content_disposition,
    content_type,
    download_name,
    render,
    timestamp,
)
from whisper_api.transcript import Segment, Transcript, Word


def make(*segments: Segment, text: str = "hello world") -> Transcript:
    return Transcript(text, segments, "en", 12.34567, {"mode": "single"})


TWO = make(Segment(0.0, 1.5, " Hello"), Segment(2.5, 3.25, "world"))


@pytest.mark.parametrize(
    ("seconds", "marker", "expected"),
    [
        (0.0, ",", "00:00:00,000"),
        (1.5, ",", "00:00:01,500"),
        (1.5, ".", "00:00:01.500"),
        (61.25, ",", "00:01:01,250"),
        (3600.0, ",", "01:00:00,000"),
        (3725.042, ".", "01:02:05.042"),
        (36000.0, ",", "10:00:00,000"),
        (59.9996, ",", "00:01:00,000"),
        (-0.2, ",", "00:00:00,000"),
    ],
)
def test_timestamp(seconds: float, marker: str, expected: str) -> None:
    assert timestamp(seconds, marker) == expected


def test_srt_numbering_and_timestamps() -> None:
    assert render(TWO, "srt") == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello\n"
        "\n"
        "2\n00:00:02,500 --> 00:00:03,250\nworld\n"
    )


def test_srt_over_one_hour() -> None:
    out = render(make(Segment(3661.5, 3665.0, "late")), "srt")
    assert out == "1\n01:01:01,500 --> 01:01:05,000\nlate\n"


def test_srt_flattens_text_and_arrow() -> None:
    out = render(make(Segment(0.0, 1.0, "a\n\nb --> c")), "srt")
    assert out.splitlines()[2] == "a b -> c"
    assert out.count("-->") == 1


def test_vtt_header_and_dot_marker() -> None:
    out = render(TWO, "vtt")
    assert out.startswith("WEBVTT\n\n")
    assert out == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.500\nHello\n"
        "\n"
        "00:00:02.500 --> 00:00:03.250\nworld\n"
    )
    assert "," not in out


def test_vtt_escapes_markup() -> None:
    out = render(make(Segment(0.0, 1.0, "a < b & c > d")), "vtt")
    assert out.splitlines()[-1] == "a &lt; b &amp; c &gt; d"


def test_vtt_over_one_hour() -> None:
    out = render(make(Segment(7200.25, 7201.0, "x")), "vtt")
    assert "02:00:00.250 --> 02:00:01.000" in out


def test_tsv_integer_ms_and_flattened_text() -> None:
    t = make(Segment(0.0, 1.5, "one\ttwo"), Segment(1.5004, 3725.0, "three\nfour\r\n five"))
    assert render(t, "tsv") == (
        "start\tend\ttext\n"
        "0\t1500\tone two\n"
        "1500\t3725000\tthree four five\n"
    )


def test_tsv_every_row_has_three_columns() -> None:
    t = make(Segment(0.0, 1.0, "\ta\tb\t"), Segment(1.0, 2.0, "c\n\nd"))
    rows = render(t, "tsv").splitlines()
    assert len(rows) == 3
    assert all(len(r.split("\t")) == 3 for r in rows)


def test_text_is_transcript_text_with_newline() -> None:
    assert render(TWO, "text") == "hello world\n"


def test_json_shape() -> None:
    body = render(TWO, "json")
    assert body == {
        "text": "hello world",
        "segments": [
            {"id": 0, "start": 0.0, "end": 1.5, "text": " Hello"},
            {"id": 1, "start": 2.5, "end": 3.25, "text": "world"},
        ],
        "language": "en",
        "duration": 12.346,
        "mode": "single",
    }


def test_verbose_json_without_words() -> None:
    body = render(TWO, "verbose_json")
    assert isinstance(body, dict)
    assert "words" not in body
    assert body["task"] == "transcribe"
    assert body["duration"] == 12.346
    assert [s["id"] for s in body["segments"]] == [0, 1]
    assert body["segments"][1]["start"] == 2.5


def test_verbose_json_words_when_present() -> None:
    words = (Word(0.12341, 0.5, " Hello,", 0.9), Word(0.5, 1.00049, "there ", 0.8),
             Word(1.0, 1.0, " ...", 0.1))
    seg = Segment(0.0, 1.0, "Hello, there ...", words, avg_logprob=-0.123456,
                  no_speech_prob=0.01234, tokens=(50364, 2425, 11), temperature=0.2,
                  compression_ratio=1.23456)
    body = render(make(seg, Segment(1.0, 2.0, "no words")), "verbose_json")
    assert isinstance(body, dict)
    assert body["words"] == [
        {"word": "Hello", "start": 0.123, "end": 0.5},
        {"word": "there", "start": 0.5, "end": 1.0},
    ]
    assert body["segments"][0]["avg_logprob"] == -0.1235
    assert body["segments"][0]["no_speech_prob"] == 0.0123
    assert body["segments"][0]["tokens"] == [50364, 2425, 11]
    assert body["segments"][0]["temperature"] == 0.2
    assert body["segments"][0]["compression_ratio"] == 1.2346


@pytest.mark.parametrize(("raw", "bare"), [
    (" so,", "so"), (' "Hello', "Hello"), (" don't", "don't"), (" 5%", "5%"), (" ¿Qué?", "Qué"),
    (" ...", ""),
])
def test_words_lose_surrounding_punctuation_like_openai(raw: str, bare: str) -> None:
    assert bare_word(raw) == bare


@pytest.mark.parametrize(("source", "name"), [
    ("talk.MP3", "talk.srt"), ("C:\\rec\\Été à Paris.m4a", "Été à Paris.srt"),
    ("https://example.com/a/My%20Talk.webm?x=1", "My Talk.srt"),
    ("https://www.youtube.com/watch?v=abc123", "abc123.srt"), (None, "transcript.srt"),
    ("../../etc/passwd", "passwd.srt"), ("...", "transcript.srt"), ('a"b;c.wav', "a_b_c.srt"),
])
def test_download_name_comes_from_the_input(source: str | None, name: str) -> None:
    assert download_name(source, "srt") == name
    header = content_disposition(name)
    assert header.startswith('attachment; filename="') and header.isascii()


@pytest.mark.parametrize("fmt", ["xml", "", "SRT", "json "])
def test_unknown_format_raises(fmt: str) -> None:
    with pytest.raises(InvalidRequestError, match="unknown format"):
        render(TWO, fmt)


def test_empty_transcript() -> None:
    empty = make(text="")
    assert render(empty, "srt") == ""
    assert render(empty, "vtt") == "WEBVTT\n\n"
    assert render(empty, "tsv") == "start\tend\ttext\n"


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_has_content_type(fmt: str) -> None:
    assert content_type(fmt)
