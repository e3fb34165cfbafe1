"""Worker processes keep freed memory for reuse (glibc): big buffers come from the heap."""

import multiprocessing
import os
import platform
import queue
import subprocess
import sys

import pytest

from tests.support.fakes import echo_factory
from whisper_api.config import Settings
from whisper_api.executors import worker, worker_config

PROBE = """
import sys
import numpy as np
from whisper_api.executors.worker import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "tuned" else False  # "environment": not called
buffer = np.ones(64 * 2**20 // 8)  # 64 MiB, as a decoder batch's attention scores
where = buffer.ctypes.data
with open("/proc/self/maps") as maps:
    heap = [line for line in maps if line.rstrip().endswith("[heap]")]
low, high = (int(x, 16) for x in heap[0].split()[0].split("-")) if heap else (0, 0)
print(applied, low <= where < high)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.parametrize(("mode", "expected"), [("tuned", "True True"),
                                                ("default", "False False")])
def test_big_buffers_come_from_the_reused_heap_only_when_tuned(mode: str, expected: str) -> None:
    # A fresh process each: the setting is process-wide and cannot be undone.
    probe = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                           timeout=60, check=True)
    assert probe.stdout.split()[-2:] == expected.split()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunables are glibc's")
def test_the_tunables_a_ray_actor_starts_with_do_what_mallopt_does() -> None:
    environment = {**os.environ, "GLIBC_TUNABLES": worker.MALLOC_TUNABLES}
    probe = subprocess.run([sys.executable, "-c", PROBE, "environment"], capture_output=True,
                           text=True, timeout=60, check=True, env=environment)
    assert probe.stdout.split()[-2:] == ["False", "True"]


def test_a_worker_tunes_malloc_before_it_starts_any_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tuned after the parent watchdog thread had started, a worker still took 1.2 M page
    faults (3.4 s of kernel time) per 707 s file; tuned first, next to none."""
    calls: list[str] = []
    monkeypatch.setattr(worker, "reuse_freed_memory", lambda: calls.append("malloc") or True)
    monkeypatch.setattr(worker, "watch_parent", lambda pid: calls.append("watchdog"))
    monkeypatch.setattr(worker, "_thread_lock_for_tqdm", lambda: calls.append("tqdm lock"))
    monkeypatch.setattr(worker.signal, "signal", lambda *args: None)  # this is pytest's process
    inbox: queue.Queue[None] = queue.Queue()
    inbox.put(None)
    receive, send = multiprocessing.Pipe(duplex=False)
    worker.process_main(0, worker_config(Settings(), 1), echo_factory, inbox, send, os.getpid())
    assert calls == ["malloc", "tqdm lock", "watchdog"]
    assert isinstance(receive.recv(), worker.Ready)
    receive.close()
    send.close()
