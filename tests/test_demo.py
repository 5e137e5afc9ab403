"""The README's demo, as a user runs it: every step of ``make demo`` runs and its checks hold, nothing it starts
listens outside loopback, and Ctrl-C or SIGTERM stops every process it started (and what those started)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo.py"
# "Never happens" bound for a stop; the demo itself sends SIGKILL 3 s after SIGTERM.
STOP_BOUND = 30.0


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
    assert "handled 1/1 candidate events; carerix_wait_for_event: success" in output, output
    assert output.count("stored #") == 5, output
    # Signatures on by default: every stored event verified, a tampered and an unsigned delivery refused.
    assert output.count("  signature verified  ") == 5, output
    assert "(valid Cx-Signature, other body): HTTP 401; an unsigned one: HTTP 401" in output, output
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
        wait_for_output(proc, out, "started api-server")
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
