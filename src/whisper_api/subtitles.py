"""Subtitle cues people can read: short lines, short cues, no overlaps (pure).

Whisper's segments are decoder windows, not subtitles: a segment may hold 170 characters or run
for 14 s. Cues are rebuilt from word timestamps instead, following common broadcast guidance
(Netflix/BBC timed-text style guides): at most `max_line_width` characters per line and
`max_line_count` lines per cue, at most ~7 s on screen, at least ~0.7 s where the next cue
leaves room, breaks preferred after punctuation and at pauses. Segments without word timestamps
get word times spread over the segment by character count, which is the best they allow.
"""

from dataclasses import dataclass

from whisper_api.errors import InvalidRequestError
from whisper_api.transcript import Segment, Transcript

# A cue may break early after punctuation once it holds this share of what fits. At half,
# JFK's "ask not what your country can do for you," (41 of 84 characters) did not break at its
# comma, and the 7 s limit left "country." alone in a cue of its own.
PUNCTUATION_FILL = 0.25
CLAUSE_END = (".", "?", "!", ",", ";", ":", "…", "。", "？", "！", "、", "，")
SENTENCE_END = (".", "?", "!", "…", "。", "？", "！")
# A pause this long between two words always starts a new cue.
PAUSE_S = 1.0


@dataclass(frozen=True)
class SubtitleOptions:
    """How cues are shaped. Names follow openai-whisper's CLI (`--max_line_width`...)."""

    max_line_width: int = 42
    max_line_count: int = 2
    max_cue_s: float = 7.0
    min_cue_s: float = 0.7

    def __post_init__(self) -> None:
        if not 10 <= self.max_line_width <= 1000:
            raise InvalidRequestError("max_line_width must be between 10 and 1000 characters")
        if not 1 <= self.max_line_count <= 10:
            raise InvalidRequestError("max_line_count must be between 1 and 10")


@dataclass(frozen=True)
class TimedWord:
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    lines: tuple[str, ...]


def build_cues(transcript: Transcript, options: SubtitleOptions) -> list[Cue]:
    words = [w for s in transcript.segments for w in timed_words(s)]
    groups = group_words(words, options)
    raw = [(g[0].start, g[-1].end, wrap_lines([w.text for w in g], options)) for g in groups]
    return retime(raw, options, transcript.duration_s)


def timed_words(segment: Segment) -> list[TimedWord]:
    """The segment's words with times; spread by character count when it has none."""
    if segment.words:
        timed = [TimedWord(w.start, w.end, w.word.strip()) for w in segment.words]
        return [w for w in timed if w.text]
    tokens = segment.text.split()
    total = sum(len(t) + 1 for t in tokens)
    span, at, spread = segment.end - segment.start, segment.start, []
    for token in tokens:
        step = span * (len(token) + 1) / total
        spread.append(TimedWord(at, at + step, token))
        at += step
    return spread


def group_words(words: list[TimedWord], options: SubtitleOptions) -> list[list[TimedWord]]:
    """Greedy: fill a cue until the next word would not fit; then break at its last clause end
    when that leaves the cue at least PUNCTUATION_FILL full, else right before that word."""
    groups: list[list[TimedWord]] = []
    current: list[TimedWord] = []
    for word in words:
        if current and word.start - current[-1].end >= PAUSE_S:
            groups.append(current)
            current = []
        if current and not _fits(current, word, options):
            keep, current = _split_at_clause(current, options)
            groups.append(keep)
            if current and not _fits(current, word, options):
                groups.append(current)
                current = []
        current.append(word)
        if current[-1].text.endswith(SENTENCE_END) and _fill(current, options) >= 1.0:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def _fits(current: list[TimedWord], word: TimedWord, options: SubtitleOptions) -> bool:
    if word.end - current[0].start > options.max_cue_s:
        return False
    texts = [w.text for w in current] + [word.text]
    return len(wrap_lines(texts, options)) <= options.max_line_count


def _fill(words: list[TimedWord], options: SubtitleOptions) -> float:
    """How full a cue is, by characters, against what one line holds."""
    return len(" ".join(w.text for w in words)) / options.max_line_width


def _split_at_clause(
    words: list[TimedWord], options: SubtitleOptions
) -> tuple[list[TimedWord], list[TimedWord]]:
    capacity = options.max_line_width * options.max_line_count
    for index in range(len(words) - 1, 0, -1):
        if words[index - 1].text.endswith(CLAUSE_END):
            kept = words[:index]
            if len(" ".join(w.text for w in kept)) >= PUNCTUATION_FILL * capacity:
                return kept, words[index:]
            break
    return words, []


def wrap_lines(words: list[str], options: SubtitleOptions) -> tuple[str, ...]:
    """Greedy wrap at `max_line_width`; two lines are balanced (the longer as short as can be),
    as subtitle editors do. A word longer than a line stays whole on its own line."""
    lines: list[list[str]] = [[]]
    for word in words:
        if lines[-1] and len(" ".join([*lines[-1], word])) > options.max_line_width:
            lines.append([])
        lines[-1].append(word)
    greedy = tuple(" ".join(line) for line in lines)
    return _balanced(words, options.max_line_width) or greedy if len(lines) == 2 else greedy


def _balanced(words: list[str], width: int) -> tuple[str, ...] | None:
    splits = [
        (" ".join(words[:i]), " ".join(words[i:]), words[i - 1].endswith(CLAUSE_END))
        for i in range(1, len(words))
    ]
    fitting = [(top, bottom, clause) for top, bottom, clause in splits
               if len(top) <= width and len(bottom) <= width]
    if not fitting:
        return None
    # A break after punctuation wins when it costs at most a few characters of balance.
    top, bottom, _ = min(fitting, key=lambda s: max(len(s[0]), len(s[1])) - 4 * s[2])
    return top, bottom


def retime(
    raw: list[tuple[float, float, tuple[str, ...]]], options: SubtitleOptions, duration_s: float
) -> list[Cue]:
    """Monotonic, never overlapping, at most `max_cue_s`, and at least `min_cue_s` unless the
    audio ends first: stretched into the silence before the next cue (decoders give words of
    zero length) or, where the next cue starts at once, pushing it on. Words squeezed into one
    instant (timed past their chunk's end) otherwise made cues of full lines for 1 ms each."""
    cues: list[Cue] = []
    end_limit = duration_s if duration_s > 0 else float("inf")
    for index, (raw_start, raw_end, lines) in enumerate(raw):
        start = max(raw_start, cues[-1].end if cues else 0.0)
        next_start = raw[index + 1][0] if index + 1 < len(raw) else end_limit
        room = max(next_start, min(start + options.min_cue_s, end_limit), start + 0.001)
        end = min(max(raw_end, start + options.min_cue_s), room, start + options.max_cue_s)
        end = max(end, min(raw_end, start + options.max_cue_s), start + 0.001)
        cues.append(Cue(start, end, lines))
    return cues
