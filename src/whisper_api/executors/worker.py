"""The worker side, whichever executor runs it: load the model once, decode chunks, report back.

What a worker sends its executor are small frozen dataclasses (`Ready`, `LoadFailed`, `Done`,
`Failed`), never tagged tuples or strings that mean errors.
"""

import ctypes
import io
import logging
import os
import signal
import threading
import time
import traceback
import wave
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from whisper_api.executors.base import WorkerConfig
from whisper_api.transcript import ChunkResult, ChunkTask, Decoded, DecodeOptions, Pending, Segment

log = logging.getLogger("whisper_api.worker")
PARENT_CHECK_S = 1.0
# What reuse_freed_memory sets: glibc tunable name -> (mallopt parameter (malloc.h), value).
MALLOC_SETTINGS = {"arena_max": (-8, 1), "mmap_max": (-4, 0), "trim_threshold": (-1, 2**31 - 1)}
# The same settings as glibc reads them from the environment when a process starts: for a
# process whose first code of ours runs after threads of its own (a Ray actor).
MALLOC_TUNABLES = ":".join(f"glibc.malloc.{name}={value}"
                           for name, (_, value) in MALLOC_SETTINGS.items())


class ChunkTranscriber(Protocol):
    def transcribe(
        self, audio: np.ndarray, options: DecodeOptions,
        on_progress: Callable[[float], None] | None = None,
    ) -> Decoded: ...

    def redo(
        self, audio: np.ndarray, pending: tuple[Pending, ...], options: DecodeOptions,
        on_progress: Callable[[float], None] | None = None,
    ) -> Decoded: ...

    def detect_language(self, audio: np.ndarray, options: DecodeOptions) -> tuple[str, float]: ...


TranscriberFactory = Callable[[WorkerConfig], ChunkTranscriber]


def load_real_transcriber(config: WorkerConfig) -> ChunkTranscriber:
    from whisper_api.transcriber import ModelSet

    return ModelSet(config)


def reuse_freed_memory() -> bool:
    """Make glibc keep the memory CTranslate2 frees and hand it out again: one arena, no
    mmap, no trim. Each decoder batch allocates and frees buffers of up to hundreds of MB (a
    window's attention scores); by default glibc maps each one afresh and the kernel zeroes
    its pages, which took a fifth of a worker's time on an AMD EPYC (docs/benchmarks.md).
    A local worker calls it once, before any thread of its own (`process_main`; called after
    the parent watchdog had started, it still left 1.2 M page faults and 3.4 s of kernel time
    per 707 s file). A Ray actor's process starts with Ray's threads, so it gets the same
    settings from its environment instead (`MALLOC_TUNABLES`). False where the C library is
    not glibc (nothing changes there)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.values())


@dataclass(frozen=True)
class Ready:
    worker_id: int
    load_s: float


@dataclass(frozen=True)
class LoadFailed:
    worker_id: int
    reason: str


@dataclass(frozen=True)
class Done:
    worker_id: int
    result: ChunkResult


@dataclass(frozen=True)
class Decoding:
    """How much of a running chunk is decoded so far (seconds of its audio)."""

    worker_id: int
    task_id: str
    decoded_s: float


@dataclass(frozen=True)
class Failed:
    """The transcriber raised on this chunk: the chunk fails, the worker lives on."""

    worker_id: int
    task_id: str
    reason: str


WorkerMessage = Ready | LoadFailed | Done | Failed | Decoding
PROGRESS_EVERY_S = 0.25  # a batch of windows finishes in one burst: one message is enough


def load(worker_id: int, config: WorkerConfig,
         factory: TranscriberFactory) -> tuple[ChunkTranscriber | None, Ready | LoadFailed]:
    started = time.perf_counter()
    try:
        transcriber = factory(config)
    except Exception as exc:
        return None, LoadFailed(worker_id, f"{type(exc).__name__}: {exc}")
    return transcriber, Ready(worker_id, time.perf_counter() - started)


def decode(
    worker_id: int, transcriber: ChunkTranscriber, task: ChunkTask,
    read_audio: Callable[[], np.ndarray], on_progress: Callable[[float], None] | None = None,
) -> Done | Failed:
    """Decode one chunk; any error (unreadable audio, a model error) fails only this chunk."""
    try:
        return Done(worker_id, run_chunk(transcriber, read_audio(), task, worker_id,
                                         on_progress))
    except Exception as exc:
        log.debug("worker %d failed: %s", worker_id, traceback.format_exc())
        return Failed(worker_id, task.task_id, f"{type(exc).__name__}: {exc}")


def run_chunk(
    transcriber: ChunkTranscriber, audio: np.ndarray, task: ChunkTask, worker_id: int,
    on_progress: Callable[[float], None] | None = None,
) -> ChunkResult:
    """Detect the language first when the task does not give one (a one-chunk file, or the
    pipeline's detection task), then decode unless the task only asks for the language."""
    began = time.perf_counter()
    options, probability = task.options, 0.0
    if options.language is None or options.detect_only:
        language, probability = transcriber.detect_language(audio, options)
        options = replace(options, language=language)
    segments: list[Segment] = []
    pending: tuple[Pending, ...] = ()
    language, redone = options.language or "en", 0
    if task.redo:
        segments, language, redone, pending = transcriber.redo(audio, task.redo, options,
                                                               on_progress)
    elif not options.detect_only:
        segments, language, redone, pending = transcriber.transcribe(audio, options, on_progress)
    return ChunkResult(task.task_id, tuple(segments), language, worker_id,
                       time.perf_counter() - began, redone, probability, pending)


def decode_wav_bytes(data: bytes) -> np.ndarray:
    """A 16 kHz mono s16 WAV file's bytes as float32 in [-1, 1] (what `audio.read_wav` gives)."""
    with wave.open(io.BytesIO(data), "rb") as wav:
        raw = wav.readframes(wav.getnframes())
    return np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768.0


def watch_parent(parent_pid: int, interval_s: float = PARENT_CHECK_S) -> threading.Thread:
    """Exit this process as soon as `parent_pid` is no longer its parent.

    A worker holds both ends of its inbox pipe, so it never sees EOF when the server is
    SIGKILLed and would wait forever holding its model's memory. A polling thread rather than
    Linux's PR_SET_PDEATHSIG: that signal fires when the *thread* that started the child exits
    (the supervisor thread respawns workers), and is Linux-only.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(0)  # no cleanup to do: the parent that would receive results is gone

    thread = threading.Thread(target=watch, name="parent-watchdog", daemon=True)
    thread.start()
    return thread


def process_main(
    worker_id: int, config: WorkerConfig, factory: TranscriberFactory, inbox: Any,
    outbox: Connection, parent_pid: int | None = None,
) -> None:
    """A local worker process: load once, report, then serve tasks from its inbox until None."""
    # Ctrl-C reaches the whole process group; the parent decides how workers stop, so a worker
    # never prints a KeyboardInterrupt traceback of its own (the pool blocks it until here).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    reuse_freed_memory()  # before the first thread: see there
    _thread_lock_for_tqdm()
    if parent_pid is not None:
        watch_parent(parent_pid)
    transcriber, loaded = load(worker_id, config, factory)
    outbox.send(loaded)
    if transcriber is None:
        return
    from whisper_api.audio import read_wav

    while (task := inbox.get()) is not None:
        path = Path(task.audio_path)
        report = _progress_reporter(worker_id, task.task_id, outbox)
        outbox.send(decode(worker_id, transcriber, task, lambda: read_wav(path),  # noqa: B023
                          report))


def _progress_reporter(worker_id: int, task_id: str, outbox: Connection) -> Callable[[float], None]:
    """Sends how much of the chunk is decoded, at most every PROGRESS_EVERY_S of wall time."""
    last_sent = -PROGRESS_EVERY_S

    def report(decoded_s: float) -> None:
        nonlocal last_sent
        if time.monotonic() - last_sent >= PROGRESS_EVERY_S:
            last_sent = time.monotonic()
            outbox.send(Decoding(worker_id, task_id, decoded_s))

    return report


def _thread_lock_for_tqdm() -> None:
    """faster-whisper's tqdm would create a multiprocessing lock: a named semaphore registered
    with the resource tracker, which a worker killed on cancel never unregisters, so the parent
    printed "leaked semaphore objects" at exit. One process needs only a thread lock."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    tqdm.set_lock(threading.RLock())
