import socket

import pytest

from tests.conftest import VIOLATIONS, is_loopback


def test_loopback_names():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback(b"127.0.0.5")
    assert not is_loopback("10.1.2.3") and not is_loopback("huggingface.co") and not is_loopback("8.8.8.8")


def test_guard_blocks_a_real_connect_attempt():
    s = socket.socket()
    try:
        with pytest.raises(ConnectionRefusedError, match="forbidden"):
            s.connect(("192.0.2.1", 80))  # TEST-NET-1: never routable
        with pytest.raises(ConnectionRefusedError):
            socket.getaddrinfo("example.org", 443)
    finally:
        s.close()
    assert len(VIOLATIONS) == 2
    VIOLATIONS.clear()  # the guard worked; don't fail this test for it


def test_loopback_is_allowed():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    c = socket.create_connection(srv.getsockname(), timeout=2)
    c.close()
    srv.close()
