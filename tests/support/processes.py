"""Polling and process helpers: every wait is bounded in time."""

import contextlib
import ipaddress
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path


def wait_for(condition: Callable[[], object], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def alive(pid: int | None) -> bool:
    """Running and not a zombie."""
    if pid is None:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def pids_mentioning(marker: str) -> set[int]:
    """Processes whose command line contains `marker` (a path unique to one test)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
        except OSError:
            continue
    return found - {os.getpid()}


def kill_all(pids: set[int], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL what is left: only ever called on processes a test started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s / 2
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)


def listening_ips(pids: set[int]) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Where these processes' TCP sockets listen: their socket inodes looked up in /proc/net."""
    inodes = set()
    for pid in pids:
        for link in _fd_links(pid):
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):  # tcp6: absent without IPv6
        for line in (table.read_text().splitlines()[1:] if table.exists() else []):
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ips.add(_proc_net_ip(fields[1].split(":")[0]))
    return ips


def _fd_links(pid: int) -> list[str]:
    """What a process's file descriptors point at; one closed meanwhile is skipped."""
    links = []
    with contextlib.suppress(OSError):  # the process is gone
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                links.append(os.readlink(fd))
    return links


def _proc_net_ip(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net writes an address as 32-bit words in the host's byte order; an IPv4 address on
    an IPv6 socket comes back as IPv4."""
    raw = bytes.fromhex(hex_ip)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    return (ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else ip
