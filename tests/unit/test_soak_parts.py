"""The parts of loadtest/soak.py that need no TorchServe: windows, the run folder, /proc process state (with real
processes of this test), and the CLI's one-line errors. The runs themselves: tests/integration/test_soak.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convserve.common.errors import ConvserveError
from convserve.hardware.procfs import group_members, is_running
from convserve.loadtest.recorded_server import RecordedServer, busy_ports, leftovers
from convserve.loadtest.soak_runs import window_lengths
from convserve.serving.server_lifecycle import stop_group, stop_recorded

ROOT = Path(__file__).resolve().parents[2]


def test_windows_cover_the_run_and_the_last_holds_the_rest():
    assert window_lengths(600, 60) == [60] * 10
    assert window_lengths(12, 4) == [4, 4, 4]
    assert window_lengths(10, 4) == [4, 4, 2]
    assert window_lengths(3, 60) == [3]


def test_a_zombie_does_not_count_as_running():
    child = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    deadline = time.monotonic() + 30
    while is_running(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Path(f"/proc/{child.pid}").exists()  # exited, not reaped: a zombie
    assert not is_running(child.pid) and group_members(child.pid) == []
    assert stop_group(child.pid, timeout=5) is None  # nothing runs: no signal, no wait
    child.wait()


def test_stop_group_terminates_a_running_group_and_says_so():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    assert group_members(child.pid) == [child.pid] and leftovers([child.pid], child.pid) == [child.pid]
    assert stop_group(child.pid, timeout=20, reap=child.poll) == "terminated"
    assert leftovers([child.pid], child.pid) == []


def test_stop_group_kills_what_ignores_sigterm():
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    assert stop_group(child.pid, timeout=0.5, reap=child.poll) == "killed"
    assert child.wait(timeout=20) == -9


def test_the_run_folder_must_hold_a_running_server(tmp_path):
    with pytest.raises(ConvserveError, match="server.json does not exist"):
        RecordedServer.read(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    gone.wait()
    (tmp_path / "server.json").write_text(json.dumps({"pgid": gone.pid}))
    with pytest.raises(ConvserveError, match="is not running"):
        RecordedServer.read(tmp_path)
    assert stop_recorded(tmp_path) is None and not (tmp_path / "server.json").exists()


def test_recorded_addresses_and_key(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (tmp_path / "server.json").write_text(json.dumps({"pgid": sleeper.pid}))
        config = "# comment=1\ninference_address=http://127.0.0.1:18180\nmanagement_address=http://127.0.0.1:18181\n"
        (tmp_path / "config.properties").write_text(config + "metrics_address=http://127.0.0.1:18182\nmodel_store=x\n")
        server = RecordedServer.read(tmp_path)
        assert server.pgid == sleeper.pid and server.worker_pids() == []
        assert server.ports() == [("127.0.0.1", 18180), ("127.0.0.1", 18181), ("127.0.0.1", 18182)]
        assert server.inference_key() is None
        (tmp_path / "key_file.json").write_text(json.dumps({"inference": {"key": "abc"}}))
        assert server.inference_key() == "abc"
        assert busy_ports(server.ports()) == []
    finally:
        sleeper.kill()
        sleeper.wait()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "loadtest/soak.py", *args], cwd=ROOT, capture_output=True, text=True)


def test_cli_errors_are_one_line(tmp_path, photos):
    base = ["--url", "http://127.0.0.1:9/predictions/x", "--images", str(photos["chelsea"])]
    done = cli(*base, "--run-dir", str(tmp_path))
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "server.json does not exist" in done.stderr
    done = cli(*base, "--run-dir", str(tmp_path), "--rate", "5", "--fault", "worker-kill")
    assert done.returncode == 2 and "--rate is for a soak" in done.stderr
    done = cli(*base, "--run-dir", str(tmp_path), "--rate", "5", "--concurrency", "3")
    assert done.returncode == 2 and "not allowed with argument" in done.stderr
