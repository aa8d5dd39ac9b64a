"""The workspace lock, for real: a second process is refused with the owner named; a lock left by a
killed process (kill -9) is recovered."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gpo.errors import GpoError
from gpo.lock import acquire, release, workspace_lock

HOLD = "import sys,time; from gpo.lock import acquire; acquire(sys.argv[1]); print('held', flush=True); time.sleep(60)"


def test_second_run_is_refused_naming_the_owner_then_a_killed_owner_is_recovered(tmp_path):
    lock = tmp_path / "data" / ".gpo.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(GpoError) as err:
            acquire(lock)
        msg = str(err.value)
        assert f"pid {proc.pid}" in msg and "started" in msg and str(lock) in msg
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    owner = json.loads(lock.read_text())
    assert owner["pid"] == proc.pid  # the dead process's lock is still on disk ...
    me = acquire(lock)  # ... and is taken over
    assert me["pid"] == os.getpid() and json.loads(lock.read_text())["pid"] == os.getpid()
    release(lock)
    assert not lock.exists()


def test_context_manager_releases_on_error(tmp_path):
    lock = tmp_path / ".gpo.lock"
    with pytest.raises(RuntimeError):
        with workspace_lock(lock):
            assert lock.exists()
            raise RuntimeError("boom")
    assert not lock.exists()
