"""The bench's WER normalisation: the same words written two ways score as the same words."""

import importlib
import sys
from pathlib import Path

import pytest

# Appended, not prepended: bench/profile.py must not hide the standard library's `profile`.
sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
run = importlib.import_module("run")


@pytest.mark.parametrize(("one", "other"), [
    ("For the 20th time", "for the twentieth time"),
    ("in the 15th century, the 21st", "in the fifteenth century the twenty-first"),
    ("mid-90s and the 1960s", "mid nineties and the nineteen sixties"),
    ("we're gonna tackle it", "We are going to tackle it."),
    ("psalters, etc., produced", "psalters et cetera produced"),
    ("Mr. Smith paid 1,000 dollars, 3.5%", "mister smith paid one thousand dollars 3.5 percent"),
    ("in 2021, uh, we grew", "In twenty twenty-one er we grew"),
    ("I'm sorry, I apologise", "I am sorry. I apologize."),
])
def test_two_spellings_of_the_same_words_score_no_error(one: str, other: str) -> None:
    assert run.normalise(one) == run.normalise(other)
    assert run.wer_percent(one, other) == 0.0


def test_different_words_still_count() -> None:
    assert run.wer_percent("the twentieth time", "the 21st time") > 0
