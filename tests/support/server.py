"""A real uvicorn server in a subprocess, for tests that talk HTTP."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class Server:
    url: str
    temp_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def temp_is_empty(self) -> bool:
        return not self.temp_dir.exists() or not any(self.temp_dir.iterdir())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def run_server(tmp: Path, unset: tuple[str, ...] = (), **env: str) -> Iterator[Server]:
    """`env` on top of this process's environment, without the variables named in `unset`."""
    port = free_port()
    log = tmp / "server.log"
    environment = {**os.environ, "TEMP_DIR": str(tmp / "temp"), "DATA_DIR": str(tmp / "data"),
                   "PARALLEL_WORKERS": "2", **env}
    for name in unset:
        environment.pop(name, None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "whisper_api.cli", "serve", "--port", str(port)],
            env=environment, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: tests can Ctrl-C it as a terminal does
        )
    server = Server(f"http://127.0.0.1:{port}", tmp / "temp", process, log)
    try:
        wait_ready(server)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_ready(server: Server, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited: {server.log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{server.url}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def worker_pids(server_pid: int) -> list[int]:
    """Spawned workers are the server's children running multiprocessing's spawn_main."""
    children = [int(pid) for task in Path(f"/proc/{server_pid}/task").iterdir()
                for pid in (task / "children").read_text().split()]
    return [pid for pid in children
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
