"""The README's demo, as a user runs it: every step of ``make demo`` runs and its checks hold, nothing it starts
listens outside loopback, and Ctrl-C or SIGTERM stops every process it started (and what those started).

The first tests run the demo's own parts without Airflow (fast): its stop path with the output closed, as
under ``make demo 2>&1 | tee demo.log`` when Ctrl-C ends ``tee``; the "deliver more events" command it
prints; its port probe. The ``airflow_e2e`` ones run the whole demo.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import ipaddress
import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo.py"
# "Never happens" bound for a stop; the demo itself sends SIGKILL 3 s after SIGTERM.
STOP_BOUND = 30.0


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("carerix_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    return module


def demo_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CARERIX"))}


def start_demo(state_dir: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    out = state_dir.parent / f"{state_dir.name}.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(DEMO), "--state-dir", str(state_dir), *args],
            env=demo_env(),
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return proc, out


def cleanup(proc: subprocess.Popen[bytes], state_dir: Path) -> None:
    """After a failure: let the demo stop what it started (SIGTERM), else stop its sessions from here."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_BOUND)
        except subprocess.TimeoutExpired:
            proc.kill()
    pidfile = state_dir / "pids.json"
    if pidfile.exists():
        for member in session_members(set(started_sessions(state_dir))):
            with contextlib.suppress(psutil.Error):
                member.kill()


def wait_for_output(proc: subprocess.Popen[bytes], out: Path, text: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = out.read_text(errors="replace")
        if text in content:
            return content
        if proc.poll() is not None:
            pytest.fail(f"the demo exited with {proc.returncode} before printing {text!r}:\n{content}")
        time.sleep(0.5)
    pytest.fail(f"the demo never printed {text!r}:\n{out.read_text(errors='replace')}")


def session_members(session_ids: set[int]) -> list[psutil.Process]:
    """Every live process in these sessions: the demo's processes and everything they started."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) in session_ids and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return members


def started_sessions(state_dir: Path) -> dict[int, str]:
    return {pid: name for name, pid in json.loads((state_dir / "pids.json").read_text()).items()}


def listening_sockets(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket and bound UDP socket of these processes."""
    found = []
    for proc in processes:
        try:
            connections = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in connections:
            if c.status == psutil.CONN_LISTEN or (c.status == psutil.CONN_NONE and c.laddr):
                found.append((" ".join(proc.cmdline()).strip()[:60] or proc.name(), c.laddr.ip, c.laddr.port))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


# A started process and what it starts: a task-runner-like child in a process group of its own that ignores
# SIGTERM (so the stop has to come back with SIGKILL), then both wait.
CHILD = """
import os, signal, subprocess, sys, time
subprocess.Popen(
    [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
    preexec_fn=os.setpgrp,
)
time.sleep(600)
"""
# The demo's own stop path around stand-in processes: its signal handlers, Stack.start, the wait for Ctrl-C
# and Stack.stop in a finally, as running_stack has it.
STOP_PATH = """
import os, sys
from pathlib import Path
import importlib.util
spec = importlib.util.spec_from_file_location("carerix_demo", sys.argv[1])
demo = sys.modules["carerix_demo"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)
state_dir = Path(sys.argv[2])
(state_dir / "logs").mkdir(parents=True)
demo.install_signal_handlers()
stack = demo.Stack(state_dir)
try:
    for name in ("first", "second"):
        stack.start(name, [sys.executable, "-c", sys.argv[3]], dict(os.environ))
    demo.console.print("ready")
    demo.wait_for_ctrl_c(stack)
finally:
    stack.stop()
(state_dir / "stop returned").touch()
"""


def read_until(proc: subprocess.Popen[bytes], text: bytes, timeout: float = 60) -> bytes:
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            pytest.fail(f"never printed {text!r}: {seen!r}")
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            pytest.fail(f"output ended before {text!r}: {seen!r}")
        seen += chunk
    return seen


@pytest.mark.timeout(120)
def test_ctrl_c_stops_every_process_when_the_output_is_closed(tmp_path: Path) -> None:
    """``make demo 2>&1 | tee demo.log``, then Ctrl-C: tee ends too, and every print of the stop meets a
    broken pipe. Rich turns that into SystemExit; the stop must still reach every process."""
    state_dir = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-c", STOP_PATH, str(DEMO), str(state_dir), CHILD],
        env=demo_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        read_until(proc, b"ready")
        sessions = started_sessions(state_dir)
        deadline = time.monotonic() + 30
        while len(session_members(set(sessions))) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(session_members(set(sessions))) == 4  # two started, each with its own child
        assert proc.stdout is not None
        proc.stdout.close()  # tee is gone: the demo's next print meets a broken pipe
        proc.send_signal(signal.SIGINT)
        returncode = proc.wait(timeout=STOP_BOUND)
        left = session_members(set(sessions))
    finally:
        cleanup(proc, state_dir)
    assert left == [], f"processes left behind: {[p.pid for p in left]}"
    assert (state_dir / "stop returned").exists() and not (state_dir / "pids.json").exists()
    assert returncode == 0


def test_the_deliver_more_events_command_delivers_and_prints_on_one_line(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The printed curl, run as a user runs it against the example spec's webhooks and a real receiver."""
    from rich.console import Console
    from typer.testing import CliRunner

    from airflow_provider_carerix.cli import app
    from airflow_provider_carerix.store import EventStore
    from tests.fixtures.receiver import start_receiver

    demo = load_demo()
    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    receiver_url, stop_receiver = start_receiver(store_url, "demo-receiver-secret")
    try:
        monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_URL", f"{receiver_url}/events")
        monkeypatch.setenv("AIRFLOW_VAR_CARERIX_RECEIVER_SECRET", "demo-receiver-secret")
        spec = str(ROOT / "example_dags" / "specs" / "carerix_webhooks.yaml")
        applied = CliRunner().invoke(app, ["apply", "--yes", "--no-record-keys", "--store", store_url, spec])
        assert applied.exit_code == 0, applied.output

        # Printed through a pipe (no terminal, the demo's width) and on a narrow terminal: one line each time.
        for console in (Console(file=io.StringIO(), width=130), Console(file=io.StringIO(), width=60)):
            monkeypatch.setattr(demo, "console", console)
            demo.print_explore_hints({"api_url": "http://127.0.0.1:8080", "emulator_url": emulator.url})
            printed = console.file.getvalue()  # type: ignore[attr-defined]
            [line] = [line for line in printed.splitlines() if "curl" in line]
            assert line == f"Deliver more events: {demo.deliver_more_command(emulator.url)}", printed

        argv = shlex.split(line.removeprefix("Deliver more events: "))
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        deliveries = json.loads(result.stdout)["deliveries"]
    finally:
        stop_receiver()
    assert deliveries, "the spec's webhook conditions filtered the hinted event out"
    assert all(200 <= int(d["status"]) < 300 for d in deliveries), deliveries
    with EventStore(store_url) as store:
        stored = store.events_after(0)
    assert [e.event_id for e in stored] == [d["event"]["id"] for d in deliveries]
    assert stored[0].type == "cremployee:updated"


def test_a_port_left_in_time_wait_counts_as_free_and_a_listening_one_as_taken() -> None:
    """A quick rerun: the previous server (SO_REUSEADDR, like every server here) closed its connections
    first, so its port sits in TIME_WAIT; the emulator can bind it, so the demo must not move elsewhere."""
    from airflow_provider_carerix.emulator import CarerixEmulator

    demo = load_demo()
    previous = socket.socket()
    previous.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    previous.bind(("127.0.0.1", 0))
    previous.listen()
    port = previous.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = previous.accept()
    served.close()  # the server closes first: its side of the connection goes to TIME_WAIT
    time.sleep(0.1)
    client.close()
    previous.close()
    time.sleep(0.1)
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # not vacuous: without SO_REUSEADDR the port looks taken
    assert demo.free_port(port) == port
    emulator = CarerixEmulator("127.0.0.1", port).start()  # and a server does bind it
    emulator.stop()

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        taken = listening.getsockname()[1]
        assert demo.free_port(taken) != taken


@pytest.mark.airflow_e2e
@pytest.mark.timeout(900)
def test_demo_runs_the_story_listens_on_loopback_only_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    state_dir = tmp_path / "demo"
    proc, out = start_demo(state_dir)
    try:
        output = wait_for_output(proc, out, "Press Ctrl-C")
        sessions = started_sessions(state_dir)
        assert set(sessions.values()) >= {"emulator", "receiver", "scheduler", "triggerer", "api-server"}
        members = session_members(set(sessions))
        sockets = listening_sockets(members)
        # Not vacuous: the emulator, the receiver and the API server do listen.
        assert len(sockets) >= 3, sockets
        exposed = [s for s in sockets if not is_loopback(s[1])]
        assert not exposed, f"listening outside 127.0.0.0/8: {exposed}"

        # The hint, as a user copies it out of the output: it delivers, and the receiver stores what it got.
        [hint] = [line for line in output.splitlines() if line.startswith("Deliver more events: curl ")]
        delivered = subprocess.run(
            shlex.split(hint.removeprefix("Deliver more events: ")),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        deliveries = json.loads(delivered.stdout)["deliveries"]
        assert deliveries and all(200 <= int(d["status"]) < 300 for d in deliveries), delivered.stdout
        from airflow_provider_carerix.store import EventStore

        with EventStore(f"sqlite:///{state_dir / 'carerix_events.db'}") as store:
            stored_ids = {e.event_id for e in store.events_after(0, limit=10_000)}
        assert {d["event"]["id"] for d in deliveries} <= stored_ids

        # What Ctrl-C in a terminal sends to the demo (its children run in sessions of their own).
        asked = time.monotonic()
        proc.send_signal(signal.SIGINT)
        returncode = proc.wait(timeout=STOP_BOUND)
        stop_seconds = time.monotonic() - asked
    finally:
        cleanup(proc, state_dir)
    output = out.read_text(errors="replace")
    print(f"demo stopped {stop_seconds:.1f} s after SIGINT")  # the figure docs/testing.md quotes
    print("\n".join(line for line in output.splitlines() if line.startswith(("stopped ", "every process"))))
    assert returncode == 0, output
    assert session_members(set(sessions)) == [], "processes left behind"
    assert not (state_dir / "pids.json").exists()

    # The story itself: the demo checks that the event-driven runs saw exactly the delivered candidate
    # payloads (by event id in their XCom) and that the sensor's run got the Intake match.
    assert "provisioning run" in output and ": success; 6 webhooks now in Carerix" in output, output
    # One sync (the DAG's scheduled first run) and the Carerix page already lists exactly those six.
    assert "the Carerix page after 1 sync(s): 6 webhooks, the same as in Carerix" in output, output
    assert sum(line.startswith("│ carerix_provision_webhooks ") for line in output.splitlines()) == 1, output
    assert "handled 1/1 candidate events; carerix_wait_for_event: success" in output, output
    assert output.count("stored #") == 5, output
    # Signatures on by default: every stored event verified, a tampered and an unsigned delivery refused.
    assert output.count("  signature verified  ") == 5, output
    assert "(valid Cx-Signature, other body): HTTP 401; an unsigned one: HTTP 401" in output, output
    # The record behind the candidate event, fetched over GraphQL by carerix_candidates_to_sql.
    assert "the record behind event #" in output and "NOT loaded" not in output, output
    assert "Demo succeeded" in output, output
    # It says what it will do and where every log is.
    assert output.index("That takes about") < output.index("1. Starting"), output
    for name in ("emulator", "receiver", "scheduler", "triggerer", "dag-processor", "api-server"):
        log = state_dir / "logs" / f"{name}.log"
        assert str(log) in output and log.exists(), name


@pytest.mark.airflow_e2e
@pytest.mark.timeout(600)
def test_sigterm_while_airflow_starts_stops_everything(tmp_path: Path) -> None:
    state_dir = tmp_path / "demo"
    proc, out = start_demo(state_dir, "--headless")
    try:
        wait_for_output(proc, out, "started dag-processor")  # the last one
        sessions = started_sessions(state_dir)
        assert len(sessions) == 6, sessions
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=STOP_BOUND)
        stop_seconds = time.monotonic() - asked
    finally:
        cleanup(proc, state_dir)
    output = out.read_text(errors="replace")
    print(f"demo stopped {stop_seconds:.1f} s after SIGTERM")
    assert returncode == 130, output
    assert "interrupted" in output, output
    assert session_members(set(sessions)) == [], "processes left behind"
    assert not (state_dir / "pids.json").exists()


def test_the_demos_writes_to_airflow_are_tried_again_on_a_5xx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow on its default SQLite answers 500 when a write waits out the scheduler's lock (seen in CI: the
    demo's unpause failed once). The demo tries again; a 4xx or five 5xx in a row still fail, saying so."""
    import httpx

    demo = load_demo()
    monkeypatch.setattr(demo.time, "sleep", lambda seconds: None)
    answers: list[int] = []
    seen: list[tuple[str, str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.content))
        status = answers.pop(0)
        return httpx.Response(status, json={"dag_run_id": json.loads(request.content).get("dag_run_id")})

    airflow = demo.Airflow("http://airflow.invalid")
    airflow.client = httpx.Client(
        base_url="http://airflow.invalid/api/v2", transport=httpx.MockTransport(handler)
    )
    answers[:] = [500, 500, 200]
    airflow.unpause("d")
    assert [(m, p) for m, p, _ in seen] == [("PATCH", "/api/v2/dags/d")] * 3
    seen.clear()
    answers[:] = [503, 200]
    run_id = airflow.trigger("d")
    assert len(seen) == 2 and seen[0][2] == seen[1][2]  # the same run id both times: never two runs
    assert run_id == json.loads(seen[0][2])["dag_run_id"]
    answers[:] = [500] * 5
    with pytest.raises(httpx.HTTPStatusError, match="500"):
        airflow.unpause("d")
    answers[:] = [404]
    with pytest.raises(httpx.HTTPStatusError, match="404"):
        airflow.unpause("d")
    assert answers == []
