"""Network seams for download tests: a fake resolver and a socket guard, loopback only."""

import ipaddress
import socket

import pytest

from whisper_api import download

PUBLIC_IP = "93.184.216.34"  # only ever returned by fake resolvers; carried to loopback below


def guard_sockets(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address a download connects to; PUBLIC_IP is carried to 127.0.0.1, and any other
    non-loopback address fails the test before a packet is sent. Returns the addresses."""
    connected: list[str] = []
    real = download.open_socket

    def open_socket(ip: str, port: int, timeout_s: float) -> socket.socket:
        connected.append(ip)
        if ip == PUBLIC_IP:
            return real("127.0.0.1", port, timeout_s)
        assert ipaddress.ip_address(ip).is_loopback, f"a test connected to {ip}"
        return real(ip, port, timeout_s)

    monkeypatch.setattr(download, "open_socket", open_socket)
    return connected
