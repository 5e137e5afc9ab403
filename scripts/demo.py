"""The whole story on one machine: Carerix emulator -> webhooks provisioned by Airflow -> events delivered to
the receiver -> stored -> DAG runs started by them -> the records behind the events, fetched by a DAG.

Run through ``make demo`` (which creates the venv first). ``--headless`` runs the same steps, checks the
outcome and exits (0 when every expected DAG run succeeded with the delivered payloads): that is what the
demo test runs. Everything listens on 127.0.0.1 only. Every process is started in a session of its own; Ctrl-C
or SIGTERM sends SIGTERM to every process group of those sessions at once and SIGKILL after a short grace,
also to what a previous demo left running when it was killed without cleaning up. Stopping never depends on
printing: under ``make demo 2>&1 | tee demo.log`` Ctrl-C ends ``tee`` too, and every later print meets a
closed pipe.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Wide enough for the event table when the output is a file or a test pipe, not a terminal.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 130)


def say(*objects: Any, **kwargs: Any) -> None:
    """Print on the stop path, where a closed output must not cut the stop short.

    Rich answers a broken pipe by pointing stdout at /dev/null and raising ``SystemExit``. Anywhere else that
    is right (the output is gone: the demo unwinds and stops what it started); while stopping, the processes
    still have to be stopped, so the print is dropped and the console kept quiet from then on.
    """
    try:
        console.print(*objects, **kwargs)
    except (OSError, SystemExit):
        console.quiet = True


PROVISION_DAG = "carerix_provision_webhooks"
EVENT_DRIVEN_DAG = "carerix_event_driven"
WAIT_DAG = "carerix_wait_for_event"
CANDIDATES_DAG = "carerix_candidates_to_sql"

# The guide's events, as the demo delivers them. `data` holds the entity fields Carerix evaluates the
# webhook conditions on (the placeholder status ids of the example spec) plus what a delivery carries.
GUIDE_EVENTS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "A candidate changed, not open for work (the webhook condition filters it out)",
        "cremployee:updated",
        {
            "entityId": "1",
            "changedFields": ["touser.lastname", "modificationdate"],
        },
    ),
    (
        "A candidate is open for work (cremployee:updated)",
        "cremployee:updated",
        {
            "entityId": "2",
            "changedFields": ["touser.tosinglestatusnode"],
            "touser": {"tosinglestatusnode": "1234"},
        },
    ),
    (
        "A match moved to stage Intake (crmatch:updated)",
        "crmatch:updated",
        {"entityId": "77", "changedFields": ["statusinfo"], "statusinfo": "1234"},
    ),
    ("A new match (crmatch:created)", "crmatch:created", {"entityId": "78"}),
    ("A new publication (crpublication:created)", "crpublication:created", {"entityId": "501"}),
    (
        "A placement became active (crjob:updated)",
        "crjob:updated",
        {"entityId": "9", "changedFields": ["tostatusnode"], "tostatusnode": "1234"},
    ),
]


# "Deliver more events": a candidate set to "Open for work", which meets the condition of the spec's
# cremployee:updated webhook (data.touser.tosinglestatusnode eq '1234'), so Carerix delivers it.
MORE_EVENTS = {
    "type": "cremployee:updated",
    "data": {
        "entityId": "3",
        "changedFields": ["touser.tosinglestatusnode"],
        "touser": {"tosinglestatusnode": "1234"},
    },
    "tenant": "demo",
}


def free_port(preferred: int) -> int:
    """The preferred port when it is free on loopback, else any free one.

    With ``SO_REUSEADDR``, as the servers bind: a port a previous run left in TIME_WAIT is free for them, so a
    quick rerun keeps its ports instead of moving the emulator to a random one.
    """
    for port in (preferred, 0):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


# Where a stop's time goes: Airflow's components shut down gracefully on SIGTERM. Measured on 2 busy cores,
# all signalled at once: scheduler (ends its LocalExecutor, waits for its workers) and dag-processor about
# 7 s, triggerer 8 s (it waits up to 10 s for its trigger runner subprocess before killing it), API server
# 13 s (uvicorn itself is done in 0.1 s; the rest is the process winding down). Stopped one after another,
# as the demo used to, that added up to about a minute. The demo keeps nothing worth a graceful stop (every
# start begins with a fresh state), so every process group gets SIGTERM at once and whatever still runs
# after the grace gets SIGKILL.
STOP_GRACE = 3.0


@dataclass
class Stack:
    """The processes the demo started, so that exactly those (and what they started) are stopped."""

    state_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "pids.json"

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = self.log_path(name).open("ab")
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own session: everything it starts can be found and stopped
            # A non-interactive parent may leave SIGINT ignored; Airflow would then ignore Ctrl-C.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.procs[name] = proc
        self.pidfile.write_text(json.dumps({n: p.pid for n, p in self.procs.items()}))
        console.print(f"   [dim]started {name} (pid {proc.pid}), log {self.log_path(name)}[/dim]")

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop every process started, whatever happens to the output (see :func:`say`)."""
        if not self.procs:
            return
        # A second Ctrl-C must not cut the stopping short: that would leave processes behind.
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        started = time.monotonic()
        try:
            stopped = stop_sessions(
                {p.pid: n for n, p in self.procs.items()},
                grace,
                on_signalled=lambda: say(
                    f"stopping every process the demo started (SIGTERM, SIGKILL after {grace:.0f} s)"
                ),
            )
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        self.procs.clear()
        self.pidfile.unlink(missing_ok=True)
        for name, how in stopped.items():
            say(f"[dim]stopped {name}: {how}[/dim]")
        say(f"[dim]every process stopped in {time.monotonic() - started:.1f} s[/dim]")


def session_members(session_ids: set[int]) -> dict[int, tuple[int, int]]:
    """pid -> (session, process group) of every live process in these sessions: the started processes and all
    they forked, including task runners in process groups of their own and orphans whose parent exited."""
    members: dict[int, tuple[int, int]] = {}
    for pid in psutil.pids():
        try:
            sid = os.getsid(pid)
            if sid in session_ids and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                members[pid] = (sid, os.getpgid(pid))
        except (OSError, psutil.Error):  # gone meanwhile, or not ours
            continue
    return members


def stop_sessions(
    leaders: dict[int, str], grace: float, on_signalled: Callable[[], None] | None = None
) -> dict[str, str]:
    """SIGTERM every process group of these sessions at once, SIGKILL what is left after ``grace`` seconds.

    ``leaders`` maps each started process (a session leader) to its name; returns how each session ended.
    ``on_signalled`` runs once SIGTERM is out (to tell people, while the processes wind down).
    """
    sessions = set(leaders)
    started = time.monotonic()
    ended: dict[str, str] = {}

    def signal_all(sig: int) -> None:
        for pgid in {pgid for _, pgid in session_members(sessions).values()} | sessions:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)

    def note_ended(how: str) -> bool:
        alive = {sid for sid, _ in session_members(sessions).values()}
        for sid, name in leaders.items():
            if name not in ended and sid not in alive:
                ended[name] = f"{how} after {time.monotonic() - started:.1f} s"
        return not alive

    signal_all(signal.SIGTERM)
    if on_signalled is not None:
        on_signalled()
    while time.monotonic() - started < grace:
        if note_ended("exited on SIGTERM"):
            return ended
        time.sleep(0.1)
    signal_all(signal.SIGKILL)
    deadline = time.monotonic() + 3
    while not note_ended("killed (SIGKILL)") and time.monotonic() < deadline:
        time.sleep(0.05)
    return ended


def stop_leftovers(state_dir: Path) -> None:
    """Stop what a previous demo left running (killed with -9, terminal closed...), by its recorded pids."""
    pidfile = state_dir / "pids.json"
    if not pidfile.exists():
        return
    leaders: dict[int, str] = {}
    with contextlib.suppress(ValueError, OSError):
        for name, pid in json.loads(pidfile.read_text()).items():
            cmdline = Path(f"/proc/{pid}/cmdline")
            if cmdline.exists() and str(ROOT) in cmdline.read_bytes().decode(errors="replace") + os.readlink(
                f"/proc/{pid}/cwd"
            ):
                say(f"[yellow]stopping {name} left by a previous demo (pid {pid})[/yellow]")
                leaders[int(pid)] = name
    if leaders:
        stop_sessions(leaders, STOP_GRACE)
    pidfile.unlink(missing_ok=True)


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as exc:  # the thing is not up yet; say why if it never comes up
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error!r})")


class Airflow:
    """The few REST calls the demo needs (the API server runs in all-admins mode: no token)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.client = httpx.Client(base_url=f"{base}/api/v2", timeout=10)

    def healthy(self) -> bool:
        r = self.client.get("/monitor/health")
        body = r.json()
        return r.status_code == 200 and all(
            body.get(c, {}).get("status") == "healthy" for c in ("metadatabase", "scheduler", "triggerer")
        )

    def dag_loaded(self, dag_id: str) -> bool:
        return self.client.get(f"/dags/{dag_id}").status_code == 200

    def _write(self, method: str, url: str, body: dict[str, Any]) -> httpx.Response:
        """A write, tried again on a 5xx: Airflow's default metadata database is SQLite, and a write that meets
        the scheduler's for longer than its busy timeout answers 500 ("database is locked") and is rolled back.
        """
        for attempt in range(5):
            r = self.client.request(method, url, json=body)
            if r.status_code < 500 or attempt == 4:
                break
            time.sleep(1 + attempt)
        r.raise_for_status()
        return r

    def unpause(self, dag_id: str) -> None:
        self._write("PATCH", f"/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        # The run id is made once, so a retried POST that did commit after all answers 409, never a second run.
        body = {"dag_run_id": f"demo__{uuid.uuid4().hex[:8]}", "logical_date": None, "conf": conf or {}}
        return str(self._write("POST", f"/dags/{dag_id}/dagRuns", body).json()["dag_run_id"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        r = self.client.get(f"/dags/{dag_id}/dagRuns", params={"order_by": "run_after", "limit": 100})
        r.raise_for_status()
        return list(r.json()["dag_runs"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        r = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}")
        r.raise_for_status()
        return str(r.json()["state"])

    def carerix_page_webhooks(self) -> set[str]:
        """The ids of the webhooks the Carerix page shows (what the last sync recorded in the event store)."""
        r = self.client.get(f"{self.base}/carerix/ui/api/webhooks")
        r.raise_for_status()
        return {str(w["webhook_id"]) for w in r.json()}

    def xcoms(self, dag_id: str, run_id: str) -> list[Any]:
        """Every XCom value of a run: where the DAGs put the payloads they handled."""
        r = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/~/xcomEntries")
        r.raise_for_status()
        values = []
        for entry in r.json().get("xcom_entries", []):
            one = self.client.get(
                f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{entry['task_id']}/xcomEntries/{entry['key']}",
                params={"map_index": entry.get("map_index", -1), "deserialize": True},
            )
            if one.status_code == 200:
                values.append(one.json().get("value"))
        return values


@contextlib.contextmanager
def running_stack(state_dir: Path, ui_port: int, timeout: float) -> Iterator[tuple[Stack, dict[str, Any]]]:
    stop_leftovers(state_dir)
    # A fresh state each run: a second demo needs no cleaning up by hand.
    shutil.rmtree(state_dir, ignore_errors=True)
    (state_dir / "logs").mkdir(parents=True)

    ports = {
        "emulator": free_port(8089),
        "receiver": free_port(8090),
        "api": free_port(ui_port),
    }
    realm, client_id, client_secret = "demo", "urn:demo/airflow", secrets.token_urlsafe(16)
    receiver_secret = secrets.token_urlsafe(24)
    store_url = f"sqlite:///{state_dir / 'carerix_events.db'}"
    emulator_url = f"http://127.0.0.1:{ports['emulator']}"
    receiver_url = f"http://127.0.0.1:{ports['receiver']}"
    api_url = f"http://127.0.0.1:{ports['api']}"

    base_env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "CARERIX_EVENT_STORE_URL": store_url,
    }
    base_env.pop("CARERIX_RECEIVER_SECRET", None)
    airflow_env = {
        **base_env,
        "AIRFLOW_HOME": str(state_dir / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(ports["api"]),
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW_CONN_CARERIX_DEFAULT": json.dumps(
            {
                "conn_type": "carerix",
                "host": emulator_url,
                "extra": {
                    "client_id": client_id,
                    "client_secret": client_secret,
                    "realm": realm,
                    "identity_host": emulator_url,
                    # Webhooks, and reading the records behind events (carerix_candidates_to_sql).
                    "scope": "urn:cx/webhooks:data:manage urn:cx/cx5Wrapper:data:manage",
                },
            }
        ),
        "AIRFLOW_VAR_CARERIX_CANDIDATES_DB": str(state_dir / "carerix_candidates.db"),
        "AIRFLOW_VAR_CARERIX_RECEIVER_URL": f"{receiver_url}/events",
        "AIRFLOW_VAR_CARERIX_RECEIVER_SECRET": receiver_secret,
    }

    stack = Stack(state_dir)
    info = {
        "ports": ports,
        "store_url": store_url,
        "emulator_url": emulator_url,
        "receiver_url": receiver_url,
        "receiver_secret": receiver_secret,  # in-process only, never printed
        "api_url": api_url,
    }
    try:
        console.print("[bold]1. Starting the Carerix emulator and the event receiver[/bold]")
        stack.start(
            "emulator",
            [
                str(BIN / "carerix-emulator"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["emulator"]),
                "--realm",
                realm,
                "--client-id",
                client_id,
            ],
            {**base_env, "CARERIX_EMULATOR_CLIENT_SECRET": client_secret},
        )
        stack.start(
            "receiver",
            [
                str(BIN / "carerix-receiver"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["receiver"]),
                "--store",
                store_url,
            ],
            {**base_env, "CARERIX_RECEIVER_SECRET": receiver_secret},
        )
        wait_until(
            "the emulator", lambda: httpx.get(f"{emulator_url}/_emulator/state").status_code == 200, 30
        )
        wait_until("the receiver", lambda: httpx.get(f"{receiver_url}/health").status_code == 200, 30)
        console.print(f"   emulator  {emulator_url}   receiver  {receiver_url}/events")

        console.print("[bold]2. Starting Airflow (API server, scheduler, triggerer, dag-processor)[/bold]")
        migrate_log = stack.log_path("db-migrate")
        console.print(f"   [dim]creating Airflow's database, log {migrate_log}[/dim]")
        with migrate_log.open("wb") as log:
            migrate = subprocess.run(
                [str(BIN / "airflow"), "db", "migrate"],
                env=airflow_env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed, see {migrate_log}")
        # The API server first: tasks reach Airflow through its execution API, and the provisioning DAG's
        # scheduled run starts as soon as the DAG is parsed. Started together, that first run could begin
        # before the API server listens and fail (connection refused), leaving Carerix unprovisioned.
        stack.start(
            "api-server",
            [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(ports["api"])],
            airflow_env,
        )
        wait_until(
            "Airflow's API server",
            lambda: httpx.get(f"{api_url}/api/v2/monitor/health", timeout=10).status_code == 200,
            timeout,
        )
        # --skip-serve-logs: Airflow's log servers listen on every interface (no host option). The API
        # server reads the task and trigger logs from the local files, so the demo needs no log server.
        for component in ("scheduler", "triggerer"):
            stack.start(component, [str(BIN / "airflow"), component, "--skip-serve-logs"], airflow_env)
        stack.start("dag-processor", [str(BIN / "airflow"), "dag-processor"], airflow_env)
        yield stack, info
    finally:
        stack.stop()


def intro(state_dir: Path, headless: bool) -> None:
    console.print(
        "[bold]Carerix -> receiver -> event store -> trigger -> DAG run, on this machine[/bold]\n"
        "This demo starts, on 127.0.0.1 only, a Carerix emulator, the event receiver and Airflow (scheduler,\n"
        "triggerer, dag-processor, API server), then:\n"
        f"  - provisions the example spec's webhooks in the emulator through the DAG {PROVISION_DAG},\n"
        f"  - starts {WAIT_DAG} (a deferrable sensor waiting for a match to reach Intake),\n"
        "  - has Carerix deliver the guide's six events, which the receiver stores,\n"
        "  - shows the stored events and the DAG runs they started,\n"
        f"  - and each candidate event beside the record {CANDIDATES_DAG} fetched for it over GraphQL.\n"
        "That takes about 1-2 minutes (Airflow's start is most of it). "
        + (
            "It then checks the outcome and stops.\n"
            if headless
            else "Airflow then keeps running for you to explore\n"
            "its UI; Ctrl-C stops every process the demo started (within 10 s).\n"
        )
        + f"Logs and databases go to {state_dir} (a fresh copy each time).\n"
    )


def refuse_tampered_delivery(info: dict[str, Any]) -> dict[str, int]:
    """What the receiver answers a delivery whose body was changed after Carerix signed it, and an unsigned one.

    Provisioning recorded each application's public key in the store; from then on the receiver checks
    ``Cx-Signature`` on every delivery of that application, whatever the secret header says.
    """
    state = httpx.get(f"{info['emulator_url']}/_emulator/state", timeout=10).json()
    app = state["applications"][0]
    body = json.dumps(
        {
            "id": f"tampered-{secrets.token_hex(4)}",
            "time": "2026-11-29T12:00:00Z",
            "type": "cremployee:updated",
            "applicationId": app["_id"],
            "webhookId": app["webhooks"][0]["_id"],
            "tenant": "demo",
            "data": {"entityId": "3"},
        }
    )
    signature = httpx.post(
        f"{info['emulator_url']}/_emulator/sign", json={"applicationId": app["_id"], "body": body}, timeout=10
    ).json()["signature"]
    headers = {"Content-Type": "application/json", "X-Carerix-Secret": info["receiver_secret"]}
    tampered = httpx.post(
        f"{info['receiver_url']}/events",
        content=body.replace('"entityId": "3"', '"entityId": "4"'),
        headers={**headers, "Cx-Signature": signature},
        timeout=10,
    )
    unsigned = httpx.post(f"{info['receiver_url']}/events", content=body, headers=headers, timeout=10)
    return {"tampered": tampered.status_code, "unsigned": unsigned.status_code}


def run_demo(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    intro(state_dir, args.headless)
    ok = True
    with running_stack(state_dir, args.ui_port, args.timeout) as (stack, info):
        api = Airflow(info["api_url"])
        wait_until("Airflow's API server and scheduler", api.healthy, args.timeout)
        for dag_id in (PROVISION_DAG, EVENT_DRIVEN_DAG, WAIT_DAG, CANDIDATES_DAG):
            wait_until(f"DAG {dag_id} to be parsed", lambda d=dag_id: api.dag_loaded(d), args.timeout)
            api.unpause(dag_id)
        console.print(f"   Airflow UI {info['api_url']}  (login: none needed, local all-admins demo mode)")
        console.print(
            f"   Carerix page {info['api_url']}/plugin/carerix  (Browse > Carerix: events, consumers, webhooks)"
        )

        console.print(f"[bold]3. Provisioning the spec's webhooks ({PROVISION_DAG})[/bold]")
        # The DAG's daily schedule starts its first run as soon as Airflow has the DAG, as it would after a
        # deployment: that one sync has to be enough, for Carerix and for the Carerix page alike.
        run_id = wait_until(
            "the provisioning DAG's first run",
            lambda: [r["dag_run_id"] for r in api.runs(PROVISION_DAG)],
            args.timeout,
        )[0]
        state = wait_until(
            "the provisioning run",
            lambda: (s := api.run_state(PROVISION_DAG, run_id)) in ("success", "failed") and s,
            args.timeout,
        )
        hooks = httpx.get(f"{info['emulator_url']}/_emulator/state").json()
        webhooks = [w for app in hooks.get("applications", []) for w in app.get("webhooks", [])]
        console.print(
            f"   provisioning run {run_id}: {state}; {len(webhooks)} webhooks now in Carerix (emulator)"
        )
        ok &= state == "success" and len(webhooks) > 0
        shown = api.carerix_page_webhooks()
        syncs = len(api.runs(PROVISION_DAG))
        console.print(
            f"   the Carerix page after {syncs} sync(s): {len(shown)} webhooks, "
            f"{'the same as' if shown == {w['_id'] for w in webhooks} else 'NOT the same as'} in Carerix"
        )
        ok &= syncs == 1 and shown == {w["_id"] for w in webhooks}

        console.print(f"[bold]4. Waiting for an Intake match ({WAIT_DAG}, deferrable sensor)[/bold]")
        wait_run = api.trigger(WAIT_DAG)
        # Give the sensor time to defer before the match arrives, as it would in real life.
        wait_until(
            "the sensor to start", lambda: api.run_state(WAIT_DAG, wait_run) == "running", args.timeout
        )

        console.print("[bold]5. Carerix delivers the guide's events[/bold]")
        delivered: dict[str, str] = {}
        for title, event_type, data in GUIDE_EVENTS:
            r = httpx.post(
                f"{info['emulator_url']}/_emulator/deliver",
                json={"type": event_type, "data": data, "tenant": "demo"},
                timeout=30,
            )
            r.raise_for_status()
            deliveries = r.json().get("deliveries", [])
            statuses = ", ".join(str(d.get("status")) for d in deliveries) or "no webhook matched"
            for d in deliveries:
                if 200 <= int(d.get("status", 0)) < 300:
                    delivered[d["event"]["id"]] = event_type
            console.print(f"   {title}: {len(deliveries)} deliveries ({statuses})")

        refused = refuse_tampered_delivery(info)
        console.print(
            f"   a tampered delivery (valid Cx-Signature, other body): HTTP {refused['tampered']}; "
            f"an unsigned one: HTTP {refused['unsigned']}"
        )
        ok &= refused == {"tampered": 401, "unsigned": 401}

        console.print("[bold]6. Events stored and the DAG runs they started[/bold]")
        from airflow_provider_carerix.store import EventStore

        store = EventStore(info["store_url"])
        stored = wait_until(
            "every delivered event to be stored",
            lambda: (
                (ev := store.events_after(0, limit=10_000))
                and {e.event_id for e in ev} >= set(delivered)
                and ev
            ),
            30,
        )
        for e in stored:
            check = "signature verified" if e.signature_verified else "signature NOT verified"
            console.print(
                f"   stored #{e.sequence} {e.type:<22} entity {e.entity_id}  {check}  id {e.event_id}"
            )
        ok &= all(e.signature_verified for e in stored if e.event_id in delivered)

        employee_ids = {i for i, t in delivered.items() if t == "cremployee:updated"}

        def handled_by_event_driven() -> set[str] | None:
            seen: set[str] = set()
            runs = api.runs(EVENT_DRIVEN_DAG)
            if not runs or any(r["state"] not in ("success", "failed") for r in runs):
                return None
            for r in runs:
                seen |= {
                    i for i in employee_ids if i in json.dumps(api.xcoms(EVENT_DRIVEN_DAG, r["dag_run_id"]))
                }
            return seen if seen >= employee_ids else None

        with contextlib.suppress(TimeoutError):
            wait_until("the event-driven runs", handled_by_event_driven, args.timeout, interval=1)
        wait_state = wait_until(
            "the sensor's run",
            lambda: (s := api.run_state(WAIT_DAG, wait_run)) in ("success", "failed") and s,
            args.timeout,
        )

        table = Table("DAG", "run", "state", "triggered by")
        for dag_id in (PROVISION_DAG, EVENT_DRIVEN_DAG, WAIT_DAG):
            for r in api.runs(dag_id):
                table.add_row(dag_id, r["dag_run_id"], r["state"], r.get("run_type", ""))
        console.print(table)
        event_runs = api.runs(EVENT_DRIVEN_DAG)
        handled = {
            i
            for r in event_runs
            for i in employee_ids
            if i in json.dumps(api.xcoms(EVENT_DRIVEN_DAG, r["dag_run_id"]))
        }
        ok &= (
            bool(event_runs) and all(r["state"] == "success" for r in event_runs) and handled == employee_ids
        )
        ok &= wait_state == "success"
        console.print(
            f"   {EVENT_DRIVEN_DAG}: {len(event_runs)} run(s), handled {len(handled)}/{len(employee_ids)} "
            f"candidate events; {WAIT_DAG}: {wait_state}"
        )
        ok &= show_records_behind_events(api, stored, state_dir / "carerix_candidates.db", args.timeout)
        console.print(f"[bold]{'Demo succeeded' if ok else 'Demo FAILED'}[/bold]")
        console.print("Logs:")
        for name in ("db-migrate", *stack.procs):
            console.print(f"   {name:<14} {stack.log_path(name)}")
        console.print(f"   {'task runs':<14} {state_dir / 'airflow' / 'logs'}/dag_id=*/run_id=*/task_id=*/")

        if not args.headless:
            print_explore_hints(info)
            wait_for_ctrl_c(stack)
    return 0 if ok else 1


def show_records_behind_events(api: Airflow, stored: list[Any], table: Path, timeout: float) -> bool:
    """Step 7: each candidate event beside the record carerix_candidates_to_sql fetched for it from Carerix's
    GraphQL API (the emulator's made-up candidates) and upserted into its SQL table."""
    import sqlite3

    console.print(f"[bold]7. The record behind each candidate event ({CANDIDATES_DAG})[/bold]")
    events = [e for e in stored if e.type == "cremployee:updated"]

    def loaded() -> dict[int, tuple[Any, ...]] | None:
        runs = api.runs(CANDIDATES_DAG)
        if not runs or any(r["state"] not in ("success", "failed") for r in runs) or not table.exists():
            return None
        with contextlib.closing(sqlite3.connect(table)) as db:
            rows = {row[0]: row[1:] for row in db.execute("SELECT * FROM candidates")}
        return rows if {int(e.entity_id) for e in events} <= set(rows) else None

    with contextlib.suppress(TimeoutError):
        wait_until(f"{CANDIDATES_DAG} to load the candidates", loaded, timeout, interval=1)
    rows = loaded() or {}
    for e in events:
        first, last, email, status = rows.get(int(e.entity_id), (None,) * 4)
        changed = ", ".join(e.payload.get("data", {}).get("changedFields") or []) or "-"
        console.print(f"   event #{e.sequence} {e.type} entity {e.entity_id} (changed: {changed})")
        console.print(
            f"     the record behind event #{e.sequence}: {first} {last} <{email}>, status {status}"
            if first is not None
            else f"     the record behind event #{e.sequence}: NOT loaded"
        )
    runs = api.runs(CANDIDATES_DAG)
    return (
        bool(events)
        and all(int(e.entity_id) in rows for e in events)
        and all(r["state"] == "success" for r in runs)
    )


def deliver_more_command(emulator_url: str) -> str:
    """A ``curl`` that has the emulator deliver :data:`MORE_EVENTS` (one line, for a shell)."""
    return (
        f"curl -X POST {emulator_url}/_emulator/deliver -H 'Content-Type: application/json' "
        f"-d '{json.dumps(MORE_EVENTS)}'"
    )


def print_explore_hints(info: dict[str, Any]) -> None:
    console.print(
        f"\nAirflow UI: {info['api_url']}  (no login needed in this demo mode)\n"
        f"Carerix page: {info['api_url']}/plugin/carerix  (events, consumers' lag, webhooks)"
    )
    # One line whatever the width, no markup: it is copied into a shell, also out of `make demo | tee` logs.
    console.print(
        f"Deliver more events: {deliver_more_command(info['emulator_url'])}",
        soft_wrap=True,
        markup=False,
    )
    console.print("Press Ctrl-C to stop every process the demo started.")


def wait_for_ctrl_c(stack: Stack) -> None:
    """Keep running until Ctrl-C or SIGTERM (see :func:`install_signal_handlers`), or a process exits."""
    with contextlib.suppress(KeyboardInterrupt):
        while all(stack.alive(n) for n in list(stack.procs)):
            time.sleep(1)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def install_signal_handlers() -> None:
    """Ctrl-C must reach the demo even when started from a non-interactive shell; SIGTERM stops it the same."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--headless", action="store_true", help="run the steps, check them, exit (for tests)")
    parser.add_argument("--state-dir", default=str(ROOT / ".demo"), help="where logs and databases go")
    parser.add_argument("--ui-port", type=int, default=8080, help="preferred Airflow UI port")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for each step")
    args = parser.parse_args()
    install_signal_handlers()
    try:
        return run_demo(args)
    except KeyboardInterrupt:  # the stack was stopped on the way out
        say("interrupted")
        return 130
    except (TimeoutError, RuntimeError) as exc:
        say(f"[red]demo failed: {exc}[/red]  (logs in {Path(args.state_dir) / 'logs'})")
        return 1


if __name__ == "__main__":
    sys.exit(main())
