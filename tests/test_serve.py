"""`make serve` for real: scripts/serve.sh starts a Prefect server and the deployment's runner; one Ctrl-C
(SIGINT to the foreground process group) or one SIGTERM stops both, promptly, with no traceback.

The script runs with its state in a temporary PREFECT_HOME on a free port (GPO_PREFECT_HOME,
GPO_PREFECT_PORT), in a process group of its own as a terminal would run it; the processes it started
are found by that PREFECT_HOME in their environment, so a child that outlived the script is caught.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults_workspace import free_port

ROOT = Path(__file__).resolve().parent.parent
SERVING = "is being served and polling for scheduled runs"


def _processes_with(home: Path) -> list[int]:
    """Live processes whose environment has PREFECT_HOME=home."""
    needle = f"PREFECT_HOME={home}".encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes() + b"\0":
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def _default_sigint() -> None:  # a terminal's shell starts the job with SIGINT at its default
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_one_signal_stops_server_and_runner(tmp_path, sig):
    home = tmp_path / "prefect-home"
    out = tmp_path / "serve.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(GPO_PREFECT_HOME=str(home), GPO_PREFECT_PORT=str(free_port()))
    with open(out, "wb") as log:
        proc = subprocess.Popen([str(ROOT / "scripts" / "serve.sh"), "test"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_default_sigint)
    try:
        deadline = time.time() + 240
        while SERVING not in out.read_text(errors="replace"):
            assert proc.poll() is None, f"serve.sh exited early:\n{out.read_text()}"
            assert time.time() < deadline, f"runner not serving within 240 s:\n{out.read_text()}"
            time.sleep(0.5)
        started = _processes_with(home)
        assert len(started) >= 2, f"expected the server and the runner: {started}"

        # Ctrl-C: the terminal sends SIGINT to the whole foreground process group
        os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
        t0 = time.time()
        code = proc.wait(timeout=40)
        took = time.time() - t0
        deadline = time.time() + 5
        while _processes_with(home) and time.time() < deadline:
            time.sleep(0.2)
        left = _processes_with(home)
    finally:
        for pid in _processes_with(home):
            os.kill(pid, signal.SIGKILL)
    text = out.read_text(errors="replace")
    assert not left, f"still running after the script exited: {left}\n{text}"
    assert took < 30, f"stopping took {took:.1f} s\n{text}"
    assert code == 128 + sig, f"exit code {code}\n{text}"
    assert "Traceback" not in text, text
    assert "Traceback" not in (home / "server.log").read_text(errors="replace")
