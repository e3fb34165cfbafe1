"""Speech regions (VAD utterances): judge what the decoder gave back for each, and fit its
timestamps inside it (pure).

Why judge by content and not only by timestamp coverage: on long-form audio tiny.en's batched
decoder sometimes returns one word for a 7 s sentence, or repeats the tail of the previous
sentence with timestamps stretched over the next one. Both cover the region in time. What they
cannot fake is how many words speech of that length holds, how compressible the text is (loops),
how sure the decoder was, and whether n-grams repeat.
"""

import math
import zlib
from collections import Counter
from dataclasses import dataclass, replace

from whisper_api.subtitles import SENTENCE_END
from whisper_api.transcript import Segment, Word

Region = tuple[float, float]

# Padding the VAD adds to a region, both sides together (speech_pad_ms=200 in the transcriber).
REGION_PAD_S = 0.4
UNSURE_BLIP_S = 1.0
MIN_SEGMENT_S = 0.05


@dataclass(frozen=True)
class RegionLimits:
    """What speech of a given length plausibly holds.

    `min_words_per_s` is a floor well under slow speech (English runs ~2.5 words/s; whispered
    and hesitant speech ~1.2); regions shorter than `judge_words_from_s` are not judged by word
    rate, since a short "yes" is right. Compression ratio and log-probability limits are
    Whisper's own temperature-fallback thresholds (openai/whisper transcribe.py).
    """

    min_words_per_s: float = 0.8
    max_words_per_s: float = 6.0
    judge_words_from_s: float = 1.6
    max_compression_ratio: float = 2.4
    min_avg_logprob: float = -1.0
    max_ngram_repeats: int = 2
    ngram: int = 3


def assign(regions: list[Region], segments: list[Segment]) -> list[list[Segment]]:
    """Each region's share of the segments.

    A decoder segment often spans several regions of its window, so a segment with word
    timestamps is cut at region boundaries: each word goes to the region it lies in. A segment
    without words goes whole to the region it overlaps most (or the nearest).
    """
    groups: list[list[Segment]] = [[] for _ in regions]
    if not regions:
        return groups
    for segment in segments:
        if not segment.words:
            groups[_home(regions, segment.start, segment.end)].append(segment)
            continue
        for index, words in _words_by_region(regions, segment.words).items():
            groups[index].append(_from_words(segment, words))
    return groups


def _words_by_region(regions: list[Region], words: tuple[Word, ...]) -> dict[int, list[Word]]:
    by_region: dict[int, list[Word]] = {}
    for word in words:
        by_region.setdefault(_home(regions, word.start, word.end), []).append(word)
    return by_region


def _from_words(segment: Segment, words: list[Word]) -> Segment:
    text = "".join(w.word for w in words).strip()
    return replace(segment, start=words[0].start, end=words[-1].end, text=text, words=tuple(words))


def _home(regions: list[Region], start: float, end: float) -> int:
    def score(index: int) -> tuple[float, float]:
        first, last = regions[index]
        overlap = max(0.0, min(last, end) - max(first, start))
        # Outside every region (a word the VAD cut off): the nearest edge, not the nearest
        # middle, or a word just before a short region goes to the long one before it.
        return overlap, -max(first - end, start - last, 0.0)

    return max(range(len(regions)), key=score)


def judge(region: Region, segments: list[Segment], limits: RegionLimits) -> str | None:
    """Why the decoder's answer for this region cannot be trusted, or None when it can."""
    text = " ".join(s.text.strip() for s in segments).strip()
    words = text.split()
    speech_s = max(0.0, region[1] - region[0] - REGION_PAD_S)
    if not words:
        return "empty"
    heard = heard_words(region, segments) if all(s.words for s in segments) else \
        sum(spoken(w) for w in words)
    if heard == 0:
        return "outside"
    if speech_s >= limits.judge_words_from_s and heard < limits.min_words_per_s * speech_s:
        return "few_words"
    if len(words) > limits.max_words_per_s * max(speech_s, 1.0):
        return "many_words"
    if compression_ratio(text) > limits.max_compression_ratio:
        return "compression"
    if mean_logprob(segments) < limits.min_avg_logprob:
        return "logprob"
    if most_repeated_ngram(words, limits.ngram) > limits.max_ngram_repeats:
        return "repeats"
    return None


def straddling(regions: list[Region], groups: list[list[Segment]], late_s: float,
               early_s: float, most_words: int) -> set[int]:
    """Regions of at most `most_words` words whose last word ends more than `late_s` past the
    region's end, or whose first word starts more than `early_s` before its start, with the
    neighbour on that side. In a packed window the decoder can skip a short sentence and time
    the next region's first words over it ("you can call me Abbie" came back as "In being", the
    next clip's first words, timed 0.7 s into it): both regions then pass the judge. A long
    region's last word often runs on into the next one's first, harmlessly. A first word that
    starts early has often only been given the silence before it: `early_s` is larger."""
    suspect: set[int] = set()
    for index, (region, group) in enumerate(zip(regions, groups, strict=True)):
        words = _words(group)
        if not words or len(words) > most_words:
            continue
        if words[-1].end > region[1] + late_s and index + 1 < len(regions):
            suspect |= {index, index + 1}
        if words[0].start < region[0] - early_s and index > 0:
            suspect |= {index - 1, index}
    return suspect


def drifted(regions: list[Region], groups: list[list[Segment]], late_s: float,
            most_words: int) -> set[int]:
    """Regions of at most `most_words` words whose next region's first word starts more than
    `late_s` after that region's start, with that neighbour. Over a window that spans the
    audio the decoder can skip a short sentence and the aligner time the next one's first
    words seconds early, over it: "and run you through" came back as "God bless them", 2.2 s
    before they were said, and the region of "God bless 'em, I hope ..." began 1.3 s before its
    first word. Both regions pass the judge."""
    words = [_words(group) for group in groups]
    suspect: set[int] = set()
    for index in range(len(regions) - 1):
        after = words[index + 1]
        if 0 < len(words[index]) <= most_words and after \
                and after[0].start > regions[index + 1][0] + late_s:
            suspect |= {index, index + 1}
    return suspect


def _words(group: list[Segment]) -> list[Word]:
    return [w for s in group for w in s.words]


def tail(group: list[Segment], after: list[Segment], most: int) -> list[Segment]:
    """The words ending a region's answer that begin the sentence its next region's answer
    goes on with (one decoder segment, cut between the two by `assign`), if at most `most`.

    The word aligner starts a word that follows a pause early: where base skipped a sentence,
    it timed the next one's "And" 1 s early, into the skipped sentence's region. That region
    fails and is decoded again; its new answer never holds "And", nor does the next region's.
    """
    if not group or not after or not group[-1].tokens or group[-1].tokens != after[0].tokens:
        return []
    words = group[-1].words
    ends = [k for k, w in enumerate(words) if w.word.strip().endswith(SENTENCE_END)]
    rest = words[ends[-1] + 1:] if ends else words
    if not 1 <= len(rest) <= most:
        return []
    return [_from_words(group[-1], list(rest))]


def carry(group: list[Segment], tail: list[Segment]) -> list[Segment]:
    """A region's last answer, then the tail of its first one, unless one of the tail's words
    is among the answer's last words already (the region's own words, written again)."""
    if not tail:
        return group
    said = bare_words(" ".join(s.text for s in tail).split())
    end = bare_words(" ".join(s.text for s in group).split())[-len(said) - 3:]
    return group if any(w in end for w in said) else [*group, *tail]


def said_once(group: list[Segment]) -> list[Segment]:
    """A region's answer that is one phrase said twice over, its first half, taken for the
    decoder's loop: base's redo of a 2 s whisper wrote "This is all very whisper This is all
    very whisper", and "2 2" for a 0.5 s "II" (sequential: each once), in 4 of 14 files. A
    speaker who says a whole region's phrase twice ("Thank you. Thank you.") loses one."""
    if not all(s.words for s in group):
        return group
    said = bare_words([w.word for s in group for w in s.words])
    left = len(said) // 2
    if not left or len(said) % 2 or said[:left] != said[left:]:
        return group
    once = []
    for segment in group:  # the first `left` words, segment by segment
        if words := list(segment.words[:left]):
            once.append(_from_words(segment, words))
        left -= len(words)
    return once


def word_count(segments: list[Segment]) -> int:
    return sum(len(s.text.split()) for s in segments)


def heard_words(region: Region, segments: list[Segment]) -> int:
    """How many of the segments' timed words the region holds: those whose middle lies in it.
    A word the aligner put outside the region was heard in a neighbour's speech: tiny.en's
    answer for a 1.2 s sentence was "left.", the last word of the sentence before, timed 0.2 s
    before the region; another region's two words were the next sentence's first two, one of
    them timed past the region's end (0.8 words/s passed)."""
    return sum(spoken(w.word) for s in segments for w in s.words
               if region[0] <= (w.start + w.end) / 2 <= region[1])


def spoken(word: str) -> int:
    """How many words a written word stands for: a number's digits each (base wrote "2002" for
    a 1.8 s "zweitausendzwei" and "2012" for "twenty twelve": one word under the word-rate
    floor, so every such region was decoded three times, to the same answer)."""
    return max(1, sum(c.isdigit() for c in word))


def unusable(region: Region, segments: list[Segment], limits: RegionLimits) -> bool:
    """Whether the decoder's last answer for a region is worse than none: a loop, more words
    than the region holds or, in a region of a blip of speech (under UNSURE_BLIP_S, pads
    included), words the decoder is unsure of. On 0.5 s of noise tiny.en's sequential fallback
    wrote "We'll see you next time." at temperature 1.0 (log-probability -1.2), and in some
    runs 30 words; `fast` wrote "you.", "Oh." and "Okay." on 0.4-0.5 s. Unsure words on 1.2-1.4 s
    were real: "Review!" (-1.03) and German "2002" (-1.02, both times in the reference), which
    a limit at 2 s had dropped."""
    verdict = judge(region, segments, limits)
    blip = region[1] - region[0] < UNSURE_BLIP_S
    return verdict in ("many_words", "compression", "repeats") or (verdict == "logprob" and blip)


def agreed(region: Region, first: list[Segment], again: list[Segment],
           limits: RegionLimits) -> bool:
    """Whether two decodes of a region, in two windows, wrote the same words and are merely
    unsure of them: a name ("Eurowetz") or a number the model rarely sees. The sequential
    decoder's temperature fallback made such words worse ("U-Rabbitz", "2000 zwei") at up to six
    decodes each: 3 s of a German file's 11 s of sequential redo. An unsure answer on a blip of
    speech is still dropped at the end (`unusable`), as the sequential decoder's is where it
    stays unsure."""
    def words(segments: list[Segment]) -> list[str]:
        return bare_words(" ".join(s.text for s in segments).split())

    return judge(region, again, limits) == "logprob" and words(first) == words(again)


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def mean_logprob(segments: list[Segment]) -> float:
    """Segments weighted by text length, as a long segment says more than a short one."""
    weights = [max(1, len(s.text)) for s in segments]
    return sum(s.avg_logprob * w for s, w in zip(segments, weights, strict=True)) / sum(weights)


def bare_words(words: list[str]) -> list[str]:
    """Words without case and the punctuation at their edges."""
    return [w.strip(".,!?;:\"'").lower() for w in words]


def most_repeated_ngram(words: list[str], n: int) -> int:
    cleaned = bare_words(words)
    grams = Counter(tuple(cleaned[i:i + n]) for i in range(len(cleaned) - n + 1))
    return max(grams.values(), default=0)


def redo_set(
    regions: list[Region], groups: list[list[Segment]], failing: set[int]
) -> set[int]:
    """Failing regions plus every region sharing a wordless segment with one.

    Without word timestamps a segment cannot be cut at region boundaries. One that overlaps a
    failing region is dropped, since its text may hold part of that region; a region that
    segment also overlapped must be decoded again too, or its words would be lost with it (a
    real bug: a chunk lost the sentence sharing a segment with a skipped one).
    """
    redo = set(failing)
    while True:
        dropped = [s for i in redo for s in groups[i] if not s.words]
        dropped += [s for g in groups for s in g
                    if not s.words and any(_overlap(regions[i], s) for i in redo)]
        grown = redo | {i for i, r in enumerate(regions) if any(_overlap(r, s) for s in dropped)}
        if grown == redo:
            return redo
        redo = grown


def _overlap(region: Region, segment: Segment) -> bool:
    return min(region[1], segment.end) - max(region[0], segment.start) > 0


def fit_to_region(region: Region, segments: list[Segment]) -> list[Segment]:
    """The region's segments with times inside it, monotonic, each at least MIN_SEGMENT_S long.

    Decoder times are kept where they are usable; otherwise the region's time is shared among
    the segments by text length (word timestamps are used for that when every segment has them).
    """
    clamped = [_clamp(s, region) for s in segments]
    if _usable(clamped):
        return [fit_words(s) for s in clamped]
    return [fit_words(s) for s in _spread(region, clamped)]


def _clamp(segment: Segment, region: Region) -> Segment:
    start = min(max(_finite(segment.start, region[0]), region[0]), region[1])
    end = min(max(_finite(segment.end, region[1]), start), region[1])
    return replace(segment, start=start, end=end)


def _finite(value: float, fallback: float) -> float:
    return value if math.isfinite(value) else fallback


def _usable(segments: list[Segment]) -> bool:
    previous_end = -math.inf
    for s in segments:
        if s.end - s.start < MIN_SEGMENT_S or s.start < previous_end:
            return False
        previous_end = s.end
    return True


def _spread(region: Region, segments: list[Segment]) -> list[Segment]:
    start, end = region
    weights = [max(1, len(s.text)) for s in segments]
    total, spread, at = sum(weights), [], start
    for segment, weight in zip(segments, weights, strict=True):
        length = (end - start) * weight / total
        spread.append(replace(segment, start=at, end=at + length))
        at += length
    return spread


def fit_words(segment: Segment) -> Segment:
    """Words inside their segment and in order."""
    words, at = [], segment.start
    for w in segment.words:
        start = min(max(_finite(w.start, at), at), segment.end)
        end = min(max(_finite(w.end, start), start), segment.end)
        words.append(Word(start, end, w.word, w.probability))
        at = end
    return replace(segment, words=tuple(words))
