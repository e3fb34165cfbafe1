"""Worker processes keep freed memory for reuse (glibc): big buffers come from the heap."""

import platform
import subprocess
import sys

import pytest

PROBE = """
import sys
import numpy as np
from whisper_api.executors.worker import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "tuned" else False
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
