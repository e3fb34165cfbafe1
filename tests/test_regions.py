"""Judging a speech region by what came back for it, and fitting times into it (pure)."""

from dataclasses import replace

from whisper_api.regions import (
    MIN_SEGMENT_S,
    RegionLimits,
    assign,
    carry,
    drifted,
    fit_to_region,
    judge,
    redo_set,
    said_once,
    spoken,
    straddling,
    tail,
)
from whisper_api.transcript import Segment, Word

LIMITS = RegionLimits()


def seg(start: float, end: float, text: str, logprob: float = -0.2) -> Segment:
    return Segment(start, end, text, avg_logprob=logprob)


def test_words_of_a_window_are_cut_at_region_boundaries() -> None:
    words = (Word(0.1, 0.5, " Hello", 0.9), Word(0.6, 1.0, " there.", 0.9),
             Word(3.2, 3.6, " Next", 0.9), Word(3.7, 4.0, " one.", 0.9))
    window = Segment(0.0, 4.0, "Hello there. Next one.", words)
    first, second = assign([(0.0, 1.2), (3.0, 4.2)], [window])
    assert [s.text for s in first] == ["Hello there."]
    assert [s.text for s in second] == ["Next one."]
    assert second[0].start == 3.2 and second[0].end == 4.0


def test_a_word_the_vad_left_out_goes_to_the_region_it_is_nearest_to() -> None:
    # "Um grupo" said softly 1 s before the VAD's region, after a long region 3 s earlier:
    # by distance to the regions' middles it would join the long one.
    words = (Word(10.0, 10.4, " Um", 0.9), Word(10.5, 10.9, " grupo", 0.9),
             Word(12.0, 12.5, " de", 0.9))
    long_before, own = assign([(0.0, 8.0), (11.9, 14.0)], [Segment(9.8, 12.5, "", words)])
    assert long_before == [] and [s.text for s in own] == ["Um grupo de"]


def test_judge_trusts_plausible_speech_and_names_what_fails() -> None:
    region = (10.0, 17.0)  # 7 s
    sentence = "and the clocks were striking thirteen as he hurried home through the wind"
    assert judge(region, [seg(10.0, 17.0, sentence)], LIMITS) is None
    assert judge(region, [], LIMITS) == "empty"
    assert judge(region, [seg(10.0, 17.0, "show")], LIMITS) == "few_words"
    assert judge(region, [seg(10.0, 17.0, " ".join(["word"] * 60))], LIMITS) == "many_words"
    assert judge(region, [seg(10.0, 17.0, sentence, logprob=-1.5)], LIMITS) == "logprob"
    looping = "as never been surpassed as never been surpassed as never been surpassed"
    assert judge(region, [seg(10.0, 17.0, looping)], LIMITS) in {"compression", "repeats"}
    assert judge((0.0, 1.0), [seg(0.0, 1.0, "yes")], LIMITS) is None  # short answers are fine


def timed(*words: tuple[float, float, str]) -> Segment:
    return Segment(words[0][0], words[-1][1], " ".join(w for _, _, w in words),
                   tuple(Word(a, b, " " + w, 0.9) for a, b, w in words), avg_logprob=-0.2)


def test_words_timed_outside_their_region_do_not_count_as_its_speech() -> None:
    # Real cases (tiny.en): the previous sentence's last word, timed 0.2 s before a 1.6 s
    # region whose own sentence was skipped; the next sentence's first two words over a 2.8 s
    # region, "at" mostly after it.
    assert judge((288.0, 289.6), [timed((287.8, 287.8, "left."))], LIMITS) == "outside"
    skipped = timed((492.1, 492.9, "Not"), (492.9, 495.2, "at"))
    assert judge((491.0, 493.85), [skipped], LIMITS) == "few_words"
    # A word straddling the region's edge counts where its middle is: inside here.
    edge = timed((68.2, 69.4, "for"), (69.4, 69.8, "African"), (69.8, 70.4, "elephants."))
    assert judge((68.7, 70.8), [edge], LIMITS) is None
    assert judge((0.0, 1.0), [timed((0.2, 0.5, "yes"))], LIMITS) is None


def test_a_number_written_in_digits_counts_as_the_words_it_stands_for() -> None:
    # base wrote "2012" for "twenty twelve" over 1.8 s of speech: one written word, under the
    # 0.8 words/s floor, but not a skip. A lone short word over as long a region still is.
    assert judge((36.7, 38.9), [timed((37.0, 38.5, "2012"))], LIMITS) is None
    assert judge((36.7, 38.9), [seg(36.7, 38.9, "2012")], LIMITS) is None  # no word times
    assert judge((36.7, 38.9), [timed((37.0, 38.5, "so"))], LIMITS) == "few_words"
    assert spoken("2002") == 4 and spoken("1.5%") == 2 and spoken("Eurowetz") == 1


def test_a_wordless_segment_takes_every_region_it_touched_into_the_redo() -> None:
    regions = [(0.0, 4.0), (4.5, 8.0), (8.5, 12.0), (13.0, 15.0)]
    spanning = seg(0.0, 8.6, "A B")
    groups = assign(regions, [spanning, seg(13.0, 15.0, "D")])
    assert redo_set(regions, groups, {2}) == {0, 1, 2}
    assert redo_set(regions, groups, {3}) == {3}


def test_unusable_decoder_times_fall_back_to_the_region() -> None:
    region = (2.0, 6.0)
    zero = [seg(3.0, 3.0, "one."), seg(9.0, 1.0, "two three ab")]  # 4 and 12 characters
    fitted = fit_to_region(region, zero)
    assert [(s.start, s.end) for s in fitted] == [(2.0, 3.0), (3.0, 6.0)]  # by text length
    kept = fit_to_region(region, [seg(1.0, 4.0, "a"), seg(4.0, 9.0, "b")])
    assert [(s.start, s.end) for s in kept] == [(2.0, 4.0), (4.0, 6.0)]  # clamped into it
    assert all(s.end - s.start >= MIN_SEGMENT_S for s in fitted + kept)


def test_words_stay_inside_their_segment_and_in_order() -> None:
    words = (Word(1.0, 2.5, " a", 0.9), Word(2.0, 9.0, " b", 0.9))
    [fitted] = fit_to_region((2.0, 6.0), [Segment(2.0, 6.0, "a b", words)])
    assert [(w.start, w.end) for w in fitted.words] == [(2.0, 2.5), (2.5, 6.0)]


def timed_words(start: float, end: float, *words: str) -> list[Segment]:
    """One segment whose words share start..end evenly."""
    step = (end - start) / len(words)
    return [timed(*((start + i * step, start + (i + 1) * step, w) for i, w in enumerate(words)))]


def test_a_short_answer_whose_word_runs_into_its_neighbour_makes_both_suspect() -> None:
    # "you can call me Abbie" skipped in a packed window: its region came back as the next
    # region's first two words, the second timed 0.8 s past the region, into the next one.
    regions = [(0.0, 4.0), (4.3, 5.8), (6.1, 12.1)]
    skipped = [timed_words(0.5, 3.5, "It", "was", "a", "bright", "cold", "day"),
               timed_words(4.5, 6.6, "In", "being"),
               timed_words(6.6, 11.6, "comparatively", "modern", "he", "was", "not")]
    assert straddling(regions, skipped, late_s=0.6, early_s=1.0, most_words=3) == {1, 2}
    assert straddling(regions, skipped, late_s=0.9, early_s=1.0, most_words=3) == set()
    # The sentence before, heard whole, with its last word running on: no suspect.
    run_on = [timed_words(0.5, 4.7, "It", "was", "a", "bright", "cold", "day"), *skipped[2:]]
    assert straddling(regions[::2], run_on, late_s=0.6, early_s=1.0, most_words=3) == set()
    # A one-word answer whose word starts long before its region: it and the region before.
    early = [skipped[0], timed_words(3.2, 5.5, "being"), skipped[2]]
    assert straddling(regions, early, late_s=0.6, early_s=1.0, most_words=3) == {0, 1}
    # One that starts early by no more than the silence before it: no suspect.
    assert straddling(regions, early, late_s=0.6, early_s=1.2, most_words=3) == set()


def test_a_short_answer_before_a_region_whose_words_start_late_makes_both_suspect() -> None:
    # "and run you through" skipped over a span of the audio: its region came back as the
    # next sentence's first words, timed seconds early; that region's words begin 1.3 s in.
    regions = [(0.0, 3.0), (3.5, 5.0), (7.3, 10.8)]
    skipped = [timed_words(0.5, 2.8, "She", "had", "your", "dark", "suit"),
               timed_words(3.5, 4.9, "God", "bless", "them"),
               timed_words(8.6, 10.4, "I", "hope", "I'll", "go", "on")]
    assert drifted(regions, skipped, late_s=1.0, most_words=3) == {1, 2}
    assert drifted(regions, skipped, late_s=1.4, most_words=3) == set()
    # Heard whole, the late region's first word starts on time: no suspect.
    heard = [*skipped[:2], timed_words(7.5, 10.4, "God", "bless", "em", "I", "hope")]
    assert drifted(regions, heard, late_s=1.0, most_words=3) == set()
    # A long answer before it is no skipped short sentence; neither is an empty one.
    assert drifted(regions[::2], skipped[::2], late_s=1.0, most_words=3) == set()
    assert drifted(regions, [skipped[0], [], skipped[2]], late_s=1.0, most_words=3) == set()


def window(*words: tuple[float, float, str]) -> Segment:
    """One decoder segment of a window, as `assign` gets it: words timed, tokens kept."""
    return replace(timed(*words), tokens=(50364, 400, 1))


def test_the_next_sentences_first_words_timed_into_a_region_are_its_tail() -> None:
    # base skipped "I can't think of an animal less like a slog" and timed the next sentence's
    # "And" 1 s early, into that sentence's region: one segment, cut between the two regions.
    regions = [(17.4, 21.7), (22.6, 29.2)]
    heard = window((21.5, 22.2, "And"), (22.6, 23.0, "which"), (23.0, 23.9, "developed."))
    skipped, after = assign(regions, [heard])
    assert [s.text for s in tail(skipped, after, 4)] == ["And"]
    # The decoder's own sentence before it stays: only the words after its last full stop.
    both = window((18.0, 20.0, "Here it is."), (21.0, 21.3, "In"), (21.4, 21.6, "being"),
                  (22.7, 23.5, "modern."))
    first, second = assign(regions, [both])
    assert [s.text for s in tail(first, second, 4)] == ["In being"]
    assert tail(first, second, 1) == []  # more words than a stray start holds
    # Two segments (two windows, or two sentences the decoder timed apart): nothing to carry.
    assert tail([timed((21.5, 22.2, "And"))], after, 4) == []


def test_a_tail_follows_the_redone_answer_unless_that_answer_ends_with_it() -> None:
    stray = [timed((21.5, 22.2, "And"))]
    redone = [timed((17.6, 21.4, "I can't think of an animal less like a slog."))]
    assert [s.text for s in carry(redone, stray)] == [redone[0].text, "And"]
    ending = [timed((17.6, 21.4, "and so on and"))]
    assert carry(ending, stray) == ending
    assert carry([], stray) == stray


def test_an_answer_written_twice_over_is_kept_once() -> None:
    # base's redo of a 2 s whisper, one segment; "2 2" for "II" split over two segments.
    loop = timed((29.5, 29.7, "This"), (29.7, 29.8, "is"), (29.8, 29.9, "all"),
                 (29.9, 30.1, "very"), (30.1, 30.4, "whisper."), (30.5, 30.7, "This"),
                 (30.7, 30.8, "is"), (30.8, 30.9, "all"), (30.9, 31.1, "very"),
                 (31.1, 31.5, "whisper."))
    [once] = said_once([loop])
    assert once.text == "This is all very whisper." and once.end == 30.4
    two = [timed((51.3, 51.5, "2")), timed((51.6, 51.8, "2"))]
    assert [s.text for s in said_once(two)] == ["2"]
    # Words repeated inside a longer answer are the speaker's: kept.
    for said in ([timed((0.0, 0.3, "No,"), (0.4, 0.7, "no,"), (0.8, 1.0, "go"), (1.0, 1.2, "on."))],
                 [timed((0.0, 0.3, "very"), (0.4, 0.7, "very"), (0.8, 1.0, "very"))], []):
        assert said_once(said) == said
