"""Test-wide guards: no network (audit hook), caches inside the project, shared tiny fixtures."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("GPO_WORKSPACE", str(ROOT))
os.environ.setdefault("GPO_CACHE", str(ROOT / ".cache"))
os.environ.setdefault("TQDM_DISABLE", "1")

import gpo  # noqa: E402  (sets the offline switches before any tool is imported)

VIOLATIONS: list[str] = []
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def is_loopback(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _audit(event: str, args: tuple) -> None:
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect":
        sock, address = args[0], args[1]
        if getattr(sock, "family", None) == socket.AF_UNIX or isinstance(address, (str, bytes)):
            return
        host = address[0]
    else:
        return
    if not is_loopback(host):
        VIOLATIONS.append(f"{event} {host!r}")
        raise ConnectionRefusedError(f"network access to {host!r} is forbidden in tests")


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def no_network():
    """Fails a test that tried a non-loopback host, even if the library swallowed the error."""
    VIOLATIONS.clear()
    yield
    found = list(VIOLATIONS)
    VIOLATIONS.clear()
    assert not found, f"code under test tried the network: {found}"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def ocr_reader():
    from gpo.rewards.ocr import OcrReader

    return OcrReader()


@pytest.fixture(scope="session")
def shipped_detector():
    from gpo.rewards.detector import Detector

    path = ROOT / "release" / "detector.pt"
    assert path.exists(), "release/detector.pt is missing: run `gpo detector` then `gpo release`"
    return Detector(path)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real local Prefect server (127.0.0.1, free port, its state in a temporary PREFECT_HOME)."""
    from tests.faults_workspace import PrefectServer

    server = PrefectServer(tmp_path_factory.mktemp("prefect-home")).start()
    yield server
    server.stop()
