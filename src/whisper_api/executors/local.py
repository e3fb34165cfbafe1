"""Persistent worker processes on this machine: each loads the model once, then decodes chunks.

A supervisor thread reads the workers' messages, routes each result to the future of the task
that asked for it, replaces dead workers (retrying their chunk once) and kills workers whose
chunk exceeds the timeout (retrying that chunk once too). Each worker has its own inbox, so the
supervisor always knows which chunk a dead worker was holding, and its own outbox pipe: a
worker killed in the middle of a message (cancel, timeout, OOM) would leave a shared queue's
write lock held forever, and every other worker blocked on its next message. Shared state is
guarded by the Dispatcher's lock. Workers die with their server (see `worker.watch_parent`).
"""

import logging
import multiprocessing as mp
import os
import signal
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from whisper_api.errors import TranscriptionError
from whisper_api.executors.base import POLL_S, Dispatcher, WorkerConfig, WorkerSlot
from whisper_api.executors.worker import (
    Decoding,
    Done,
    Failed,
    LoadFailed,
    Ready,
    TranscriberFactory,
    WorkerMessage,
    load_real_transcriber,
    process_main,
)
from whisper_api.transcript import ChunkResult

log = logging.getLogger("whisper_api.pool")


@dataclass
class _Process(WorkerSlot):
    process: BaseProcess | None = None
    inbox: Any = None
    outbox: Connection | None = None  # the reading end; None once the worker closed it

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


class WorkerPool(Dispatcher):
    """The local ChunkExecutor."""

    def __init__(
        self,
        size: int,
        config: WorkerConfig,
        chunk_timeout_s: float = 600.0,
        factory: TranscriberFactory = load_real_transcriber,
    ) -> None:
        super().__init__(size, chunk_timeout_s)
        self._size, self._config, self._factory = size, config, factory
        self._ctx = mp.get_context("spawn")
        self._workers: dict[int, _Process] = {}
        self._retired: list[Connection] = []  # replaced workers' outboxes, for the supervisor
        self._replacing: set[int] = set()  # workers stopped on purpose (a cancelled chunk)
        self._thread: threading.Thread | None = None

    def _slots(self) -> list[_Process]:  # type: ignore[override]
        return list(self._workers.values())

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        for worker_id in range(self._size):
            self._spawn(worker_id)
        self._thread = threading.Thread(target=self._supervise, name="pool-supervisor", daemon=True)
        self._thread.start()

    def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Stage one: stop taking work and let running chunks finish. Stage two: force."""
        self._drain(drain_timeout_s)
        with self._lock:
            for worker in self._workers.values():
                worker.inbox.put(None)
                if not worker.ready and worker.process:
                    worker.process.kill()  # a model still loading has no work to finish
        if self._thread:
            self._thread.join(timeout=drain_timeout_s + 5)
        for worker in self._workers.values():
            assert worker.process is not None
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
        self._fail_all("the service is shutting down")

    def _stop_worker(self, slot: WorkerSlot) -> None:
        """Kill only: `cancel` runs on the caller's thread (the event loop's), so waiting for
        the process and starting its replacement is left to the supervisor (`_reap_dead`)."""
        process = self._workers[slot.worker_id].process
        if process is not None:
            process.kill()
        self._replacing.add(slot.worker_id)

    def _on_queued(self) -> None:
        self._dispatch()  # an idle worker starts now, not at the supervisor's next poll

    # --- supervisor ------------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stopping.is_set() or any(
            w.process and w.process.is_alive() for w in list(self._workers.values())
        ):
            self._survive(self._supervise_once, "pool supervisor")

    def _supervise_once(self) -> None:
        for message in self._receive():
            self._handle(message)
        with self._lock:
            self._close_retired()
            self._reap_dead()
            self._kill_late()
            self._dispatch()

    def _receive(self) -> list[WorkerMessage]:
        """Whatever the workers sent within POLL_S; a closed pipe means its worker is gone."""
        with self._lock:
            open_slots = {w.outbox: w for w in self._workers.values() if w.outbox is not None}
        messages = []
        for outbox in wait(list(open_slots), timeout=POLL_S):
            assert isinstance(outbox, Connection)
            try:
                messages.append(outbox.recv())
            except (EOFError, OSError):  # dead, or killed in the middle of a message
                with self._lock:
                    open_slots[outbox].outbox = None
                    self._retired.append(outbox)
        return messages

    def _close_retired(self) -> None:
        """Only the supervisor waits on outboxes, so only it closes them, between waits."""
        for outbox in self._retired:
            outbox.close()
        self._retired.clear()

    def _handle(self, message: WorkerMessage) -> None:
        if isinstance(message, Decoding):
            self._report_progress(message.task_id, message.decoded_s)
            return
        with self._lock:
            worker = self._workers.get(message.worker_id)
            if isinstance(message, Ready) and worker:
                worker.ready = True
                log.info("[WORKER %d] Model loaded in %.2fs", message.worker_id, message.load_s)
            elif isinstance(message, LoadFailed):
                self._cannot_load(message.reason)
                log.error("[WORKER %d] cannot load the model: %s", message.worker_id,
                          message.reason)
            elif isinstance(message, Done):
                self._finish(worker, message.result.task_id, message.result)
            elif isinstance(message, Failed):
                self._finish(worker, message.task_id, TranscriptionError(message.reason))

    def _finish(self, worker: _Process | None, task_id: str,
                outcome: ChunkResult | Exception) -> None:
        if worker is None or worker.running is None or worker.running.task.task_id != task_id:
            return  # a late answer for a chunk that timed out or was failed meanwhile
        pending, worker.running = worker.running, None
        self._deliver(pending, outcome)

    def _dispatch(self) -> None:
        if self._stopping.is_set():
            return
        for worker in self._workers.values():
            if worker.ready and worker.running is None:
                pending = self._next_for(worker)
                if pending is None:
                    return
                worker.inbox.put(pending.task)

    def _reap_dead(self) -> None:
        for worker_id, worker in list(self._workers.items()):
            assert worker.process is not None
            if worker.process.is_alive():
                continue
            pending, worker.running = worker.running, None
            if worker_id in self._replacing:
                self._replacing.discard(worker_id)
                if not self._stopping.is_set():
                    self._spawn(worker_id)  # not a restart: nothing went wrong
                continue
            if self._stopping.is_set() or self._load_failure:
                # Stopping, or the model cannot load: a replacement would die the same way.
                if pending is not None:
                    self._retry_or_fail(pending, "the worker stopped", retry=False)
                continue
            log.warning(
                "[WORKER %d] died (exit code %s); starting a replacement",
                worker_id, worker.process.exitcode,
            )
            self._stats.restarts += 1
            if pending is not None:
                self._retry_or_fail(pending, "the worker process died")
            self._spawn(worker_id)

    def _kill_late(self) -> None:
        """A worker stuck past CHUNK_TIMEOUT_S is killed; `_reap_dead` replaces it."""
        for slot in self._timed_out():
            if process := self._workers[slot.worker_id].process:
                process.kill()

    def _spawn(self, worker_id: int) -> None:
        if (old := self._workers.get(worker_id)) and old.outbox is not None:
            self._retired.append(old.outbox)
        inbox = self._ctx.Queue()
        outbox, sender = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=process_main,
            args=(worker_id, self._config, self._factory, inbox, sender, os.getpid()),
            name=f"whisper-worker-{worker_id}",
            daemon=True,
        )
        # The child inherits the blocked SIGINT through exec, so a Ctrl-C while it still imports
        # cannot print a traceback either; process_main ignores it, then unblocks it.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        sender.close()  # the child holds its own copy: its death must read as EOF here
        self._workers[worker_id] = _Process(worker_id, process=process, inbox=inbox,
                                            outbox=outbox)
