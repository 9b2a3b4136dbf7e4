"""The parts of loadtest/soak.py that need no server: windows, the run folder (TorchServe's and the v2 server's),
/proc process state (with real processes of this test), ports, the report's lines, and the CLI's one-line errors.
The runs themselves: tests/integration/test_soak.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convserve.common.errors import ConvserveError
from convserve.hardware.machine import MachineSummary
from convserve.hardware.procfs import group_members, is_running, v2_worker_index
from convserve.loadtest.recorded_server import TORCHSERVE, V2_SERVER, RecordedServer, busy_ports, leftovers
from convserve.loadtest.server_metrics import recorded_metrics_url
from convserve.loadtest.soak_results import SoakReport, SoakWindow, soak_lines
from convserve.loadtest.soak_runs import window_lengths
from convserve.serving.server_lifecycle import free_port, port_is_free, stop_group, stop_recorded

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
        assert server.kind == TORCHSERVE and server.pgid == sleeper.pid and server.worker_pids() == []
        assert server.ports() == [("127.0.0.1", 18180), ("127.0.0.1", 18181), ("127.0.0.1", 18182)]
        assert server.inference_key() is None
        (tmp_path / "key_file.json").write_text(json.dumps({"inference": {"key": "abc"}}))
        assert server.inference_key() == "abc"
        assert busy_ports(server.ports()) == []
    finally:
        sleeper.kill()
        sleeper.wait()


# A stand-in for the v2 server's supervisor: worker children run with the worker module and index on their command
# line (started out of index order), and one child of another kind that is no worker.
FAKE_SUPERVISOR = """
import subprocess, sys, time
nap = "import time; time.sleep(60)"
worker = [sys.executable, "-c", nap, "-m", "convserve.serving.kserve_server", "settings.json", "--workers", "2"]
kids = [subprocess.Popen([*worker, "--worker", str(i)]) for i in (1, 0)]
other = subprocess.Popen([sys.executable, "-c", nap])
print(*(k.pid for k in kids), other.pid, flush=True)
time.sleep(60)
"""


def test_a_v2_run_folder_reads_the_supervisor_and_its_workers_in_index_order(tmp_path):
    supervisor = subprocess.Popen(
        [sys.executable, "-c", FAKE_SUPERVISOR], start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    try:
        worker1, worker0, other = map(int, supervisor.stdout.readline().split())
        (tmp_path / "server.json").write_text(json.dumps({"pgid": supervisor.pid, "url": "http://127.0.0.1:18190"}))
        settings = {"host": "127.0.0.1", "port": 18190, "grpc_port": 18191, "workers": 2}
        (tmp_path / "settings.json").write_text(json.dumps(settings))
        (tmp_path / "key_file.json").write_text(json.dumps({"inference": {"key": "not the v2 server's"}}))
        server = RecordedServer.read(tmp_path)
        assert server.kind == V2_SERVER and server.kind.rss_roles == ("worker", "supervisor")
        assert server.processes() == [(supervisor.pid, "supervisor"), (worker0, "worker"), (worker1, "worker")]
        assert server.worker_pids() == [worker0, worker1] and other not in server.worker_pids()
        assert [v2_worker_index(pid) for pid in (worker0, worker1, other)] == [0, 1, None]
        assert server.rss_mb("worker") > server.rss_mb("supervisor") > 0 and server.rss_mb("frontend") is None
        assert server.ports() == [("127.0.0.1", 18190), ("127.0.0.1", 18191)] and server.inference_key() is None
        assert recorded_metrics_url(server) == "http://127.0.0.1:18190/metrics"  # /metrics on its one port
        assert stop_group(supervisor.pid, timeout=20, reap=supervisor.poll) == "terminated"
        assert leftovers([pid for pid, _ in server.processes()], supervisor.pid) == []
    finally:
        if supervisor.poll() is None:
            stop_group(supervisor.pid, timeout=5, reap=supervisor.poll)
        supervisor.wait()


def test_a_run_folder_of_neither_server_is_refused(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (tmp_path / "server.json").write_text(json.dumps({"pgid": sleeper.pid}))
        with pytest.raises(ConvserveError, match="neither config.properties .* nor settings.json"):
            RecordedServer.read(tmp_path)
        (tmp_path / "settings.json").write_text(json.dumps({"host": "127.0.0.1"}))
        with pytest.raises(ConvserveError, match="names no host and port"):
            RecordedServer.read(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_port_is_busy_while_listened_on_not_while_its_closed_connections_wait():
    port = free_port()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
    listener.bind(("127.0.0.1", port))
    listener.listen()
    assert busy_ports([("127.0.0.1", port)]) == [("127.0.0.1", port)]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server closes first: its side of the connection waits in TIME_WAIT
    assert client.recv(1) == b""
    client.close()
    listener.close()
    time.sleep(0.1)
    plain = socket.socket()
    with pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # a bind without SO_REUSEADDR still fails for a minute
    plain.close()
    assert port_is_free("127.0.0.1", port)  # yet nothing listens: a new server can bind it
    assert busy_ports([("127.0.0.1", port)]) == []


def window(index: int, worker_mb: float, beside: str) -> SoakWindow:
    return SoakWindow(
        index=index, seconds=4.0, ok=100, errors={}, unfinished=0, throughput_rps=25.0, p50_ms=10.0, p99_ms=20.0,
        rss_mb={"worker": worker_mb, beside: None}, worker_pids=[11, 12],
    )  # fmt: skip


def test_the_soak_table_names_the_process_beside_the_workers():
    machine = MachineSummary(cpu="test", cpus=2, load_average_start=[0.0, 0.0, 0.0])
    report = SoakReport(
        server="v2 server", url="http://127.0.0.1:9/predictions/digits", concurrency=4, minutes=0.2, window_s=4.0,
        started_at="now", machine=machine, windows=[window(0, 1300.0, "supervisor"), window(1, 1301.5, "supervisor")],
        errors={}, rss_growth=0.001, p99_drift=0.0, worker_restarts=0, checks=[],
    )  # fmt: skip
    lines = soak_lines(report)
    assert lines[0].startswith("soak v2 server http://127.0.0.1:9/predictions/digits")
    assert lines[1].endswith("worker RSS MB  supervisor RSS MB") and "frontend" not in "\n".join(lines)
    assert lines[3].endswith("1301.5                  –")  # each value under its column's right edge
    assert report.windows[1].worker_rss_mb == 1301.5
    assert "worker_rss_mb" not in report.model_dump()["windows"][0]  # in the JSON once, under rss_mb


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
