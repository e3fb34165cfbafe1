"""Values that cross process boundaries: small frozen dataclasses of primitives."""

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    # As the decoder gave them, for OpenAI's verbose_json.
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    compression_ratio: float = 0.0

    def shifted(self, offset_s: float) -> "Segment":
        words = tuple(
            Word(w.start + offset_s, w.end + offset_s, w.word, w.probability) for w in self.words
        )
        return replace(self, start=self.start + offset_s, end=self.end + offset_s, words=words)


# `base` `fast`'s packed redo: a second of silence between the regions. With 0.3 s, `base`
# ran Portuguese regions together (pt seed 7: 17.3 -> 18.6 % WER).
SPANS_REDO_PAUSE_S = 1.0


@dataclass(frozen=True)
class DecodeOptions:
    """How a worker decodes a chunk. `window_s` bounds how much speech shares one decoder window.

    `model` names one of the worker's models ("" = its default). `language` None: the worker
    detects it first. `detect_only`: answer with the language and no segments.
    """

    language: str | None = None
    task: str = "transcribe"
    word_timestamps: bool = False
    initial_prompt: str | None = None
    temperature: float = 0.0
    beam_size: int = 1
    window_s: float = 12.0
    batch_size: int = 8
    # Failing regions first decoded again alone in batches; only those still failing go to
    # the sequential decoder one by one (unless `sequential_redo` is off).
    batched_redo: bool = False
    sequential_redo: bool = True
    redo_window_s: float = 10.0
    # None: a window is a span of the audio, pauses included. A number: a window holds speech
    # only, the regions back to back with this much silence between them (fewer windows, as
    # faster-whisper's batched pipeline packs them; the decoder then skips a little more).
    pause_s: float | None = None
    # `fast` (with `batched_redo`): failing regions are decoded again packed into full windows,
    # this much silence between them, then those still failing in short spans of their own.
    redo_pause_s: float | None = None
    # Spans of the audio (`pause_s` None): each window is cut at its longest pause that leaves
    # it at least this full (0.0: the longest pause in the window, wherever it falls).
    window_fill: float = 0.5
    # Windows of at most this many seconds, each cut at its longest pause (about a sentence),
    # for every language but English, where `window_s` windows do as well in less time.
    sentence_window_s: float | None = None
    # None: every window is encoded as Whisper's 30 s input, padded with silence. Seconds: a
    # batch's windows are encoded with only as much input as the longest of them holds plus
    # this much silence. The encoder's cost grows faster than its input (base, one thread:
    # 15 s cost 27 % of 30 s), so short windows become cheap.
    encoder_pad_s: float | None = None
    model: str = ""
    detect_only: bool = False
    # Other chunks of the same file run on the other workers meanwhile: decode on one lane.
    fan_out: bool = False

    def for_language(self, language: str | None) -> "DecodeOptions":
        """The windows, first pass and redo, for speech in `language` (known by the time a
        chunk is decoded)."""
        if language == "en":
            return self
        if self.sentence_window_s is not None:
            return replace(self, window_s=self.sentence_window_s, window_fill=0.0)
        return self


@dataclass(frozen=True)
class Pending:
    """A region a fanned-out chunk leaves for its file's redo pass (neighbouring pieces of one
    sentence as one: `transcriber._adjoins`), which decodes every chunk's pending regions at
    once: in full windows, on all lanes. Seconds in the chunk's audio;
    `quiet`: found by the quiet-speech pass, not by the VAD. `first`: the first pass's answer
    for a region that passed the judge but is suspect (`regions.straddling`, `drifted`), in
    seconds from the region's start: the redo replaces it only with clearly more words.
    `joined`: a suspect whose region follows the one pending before it, in the same run of
    suspect neighbours.
    `near`: the region before it in the redo pass's list ends at most 10 s before it in the
    file (`pipeline.ONE_PLACE_S`): the two come from one place. `tail`: the first words of
    the next region's sentence, timed into this one (`regions.tail`), in seconds from its
    start: they follow its new answer unless that ends with them."""

    start_s: float
    end_s: float
    quiet: bool = False
    first: tuple[Segment, ...] = ()
    joined: bool = False
    near: bool = False
    tail: tuple[Segment, ...] = ()

    def through(self, after: "Pending") -> "Pending":
        """This region and `after`, the next one in the same audio, as one: up to its end,
        quiet only if both are, with its tail."""
        return replace(self, end_s=after.end_s, quiet=self.quiet and after.quiet,
                       tail=tuple(s.shifted(after.start_s - self.start_s) for s in after.tail))


# What a worker's transcriber answers for a chunk: segments, the language, how many regions
# were decoded again, and the regions it left for the file's redo pass.
Decoded = tuple[list[Segment], str, int, tuple[Pending, ...]]


@dataclass(frozen=True)
class ChunkTask:
    """`redo` non-empty: a redo-pass task, whose audio holds just these regions."""

    task_id: str
    request_id: str
    audio_path: str
    offset_s: float
    duration_s: float
    options: DecodeOptions
    redo: tuple[Pending, ...] = ()


@dataclass(frozen=True)
class ChunkResult:
    task_id: str
    segments: tuple[Segment, ...]
    language: str
    worker_id: int = -1
    elapsed_s: float = 0.0
    redone_utterances: int = 0
    language_probability: float = 0.0  # 0 when the language was given, not detected
    pending: tuple[Pending, ...] = ()  # regions left for the file's redo pass


@dataclass(frozen=True)
class Transcript:
    text: str
    segments: tuple[Segment, ...]
    language: str
    duration_s: float
    extra: dict[str, object] = field(default_factory=dict)
    language_probability: float = 0.0
