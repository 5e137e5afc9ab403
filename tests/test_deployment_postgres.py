"""The PostgreSQL parts of docs/deployment.md, against a real PostgreSQL and a real PgBouncer.

* The page's SQL (a database of its own, a schema of its own) and the compose file's ``carerix-store.sh`` give a
  role that can create the store and use every part of it (events, cursors, leases, heartbeats, signing keys,
  purge, ``/health``'s probe, ``LISTEN``), with its password really checked (scram), and nothing more.
* What PgBouncer does to the store, as the page's table says: the startup ``options`` refused, or silently
  dropped when ignored; the role's own settings applied instead; ``NOTIFY`` lost in transaction pooling and
  delivered in session pooling; psycopg's prepared statements broken by transaction pooling.

PgBouncer comes from Debian's package: installed by the test when missing and possible (root with apt-get),
skipped otherwise outside CI, a failure under ``CI=true``. ``python -m tests.test_deployment_postgres``
measures how many concurrent inserts fail through each pooling mode (the figures on the page).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
import sqlalchemy as sa

from airflow_provider_carerix.definitions.models import EventPayload
from airflow_provider_carerix.store import EventStore, StoreUnavailable
from airflow_provider_carerix.triggers.shared_stream import NotifyListener
from tests.fixtures.postgres import PostgresCluster, _os_user_for_root, _require_postgres, find_pg_bin
from tests.guide import guide_event
from tests.test_docs import blocks

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "deployment.md"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SQL = [b.body for b in blocks(PAGE) if b.lang == "sql"]
INIT_SCRIPT = next(b.body for b in blocks(PAGE) if b.lang == "bash" and "carerix-store.sh" in b.body)
OWN_DATABASE, OWN_SCHEMA, ROLE_SETTINGS = SQL
DOC_PASSWORD = "change-me"  # the password the page's SQL sets


# -- helpers ----------------------------------------------------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A cluster of its own: the page's SQL creates the cluster-wide role ``carerix``."""
    _require_postgres()
    with PostgresCluster(fsync=False) as pg:
        yield pg


def superuser(pg: PostgresCluster, sql: str, database: str = "postgres") -> None:
    """Run a page's SQL block statement by statement (CREATE DATABASE refuses a transaction block)."""
    with psycopg.connect(
        f"host=127.0.0.1 port={pg.port} user=postgres dbname={database}", autocommit=True
    ) as conn:
        for statement in (s.strip() for s in sql.split(";")):
            if statement:
                conn.execute(statement)


def require_passwords(pg: PostgresCluster) -> None:
    """The fixture's cluster trusts everyone; make ``carerix`` prove its password (scram), as in production."""
    hba = pg.data_dir / "pg_hba.conf"
    hba.write_text(
        "local all all trust\nhost all carerix 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n"
    )
    if os.geteuid() == 0:
        shutil.chown(hba, user=_os_user_for_root())
    with psycopg.connect(
        f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres", autocommit=True
    ) as c:
        c.execute("SELECT pg_reload_conf()")
        errors = c.execute("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL").fetchone()
        assert errors == (0,)


def role_url(port: int, database: str, password: str = DOC_PASSWORD, user: str = "carerix") -> str:
    return f"postgresql+psycopg://{user}:{quote(password, safe='')}@127.0.0.1:{port}/{database}"


def store_event(store: EventStore, event_id: str | None = None) -> int:
    event = guide_event(entity_id=int(uuid.uuid4().int % 10**6))
    event["id"] = event_id or str(uuid.uuid4())
    raw = json.dumps(event)
    return store.insert(raw, EventPayload.model_validate_json(raw))[0]


async def notified(url: str, writer: EventStore, *, wait: float) -> bool:
    """Whether the store's own NOTIFY listener on ``url`` wakes for an event ``writer`` stores."""
    wake = asyncio.Event()
    listener = NotifyListener(url, wake)
    try:
        await listener.ensure()
        assert listener.active, "LISTEN failed"
        await asyncio.sleep(0.2)
        await asyncio.to_thread(store_event, writer)
        try:
            await asyncio.wait_for(wake.wait(), wait)
        except asyncio.TimeoutError:
            return False
        return True
    finally:
        await listener.close()


def use_every_part(url: str) -> str:
    """Create the store as the connecting role and use each table and server feature the provider uses;
    returns the schema the events table went to."""
    store = EventStore(url)
    try:
        first = store_event(store, "evt-first")
        second = store_event(store)
        assert [e.sequence for e in store.events_after(0)] == [first, second]
        assert store.last_sequence() == second
        assert store.identity().store_id
        store.record_heartbeat(
            "standalone@test",
            kind="standalone",
            host="h",
            pid=1,
            version="0",
            started_at=datetime.now(timezone.utc),
        )
        assert [r.receiver_id for r in store.receivers_seen()] == ["standalone@test"]
        assert store.advance_cursor("consumer", second) == second
        lease = store.acquire_lease("consumer", owner="dag", holder="dag/1", ttl=30)
        assert lease is not None and store.renew_lease("consumer", "dag/1", 30)
        assert store.release_lease("consumer", "dag/1", cursor="consumer:processed", sequence=second)
        store.record_signing_key("app", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
        store.probe_write()
        store.purge(timedelta(seconds=1))
        assert asyncio.run(notified(url, store, wait=5.0)), "no NOTIFY reached the role's LISTEN"
        with store.engine.connect() as conn:
            schema = conn.execute(
                sa.text(
                    "SELECT table_schema FROM information_schema.tables WHERE table_name = 'carerix_events'"
                )
            ).scalar_one()
        return str(schema)
    finally:
        store.close()


def role_attributes(pg: PostgresCluster) -> tuple[bool, ...]:
    with psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres") as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = 'carerix'"
        ).fetchone()
    assert row is not None
    return tuple(row)


# -- the role and its database ----------------------------------------------------------------------------


def test_a_database_of_its_own_is_all_the_role_needs(cluster: PostgresCluster) -> None:
    superuser(cluster, OWN_DATABASE)
    require_passwords(cluster)
    assert role_attributes(cluster) == (False, False, False, False, False)
    with pytest.raises(StoreUnavailable):  # the password is checked
        EventStore(role_url(cluster.port, "carerix", "wrong")).last_sequence()
    assert use_every_part(role_url(cluster.port, "carerix")) == "public"


def test_a_schema_of_its_own_in_an_existing_database(cluster: PostgresCluster) -> None:
    superuser(cluster, "CREATE DATABASE airflow")
    superuser(cluster, OWN_SCHEMA, database="airflow")  # connected to that database, as the page says
    require_passwords(cluster)
    assert role_attributes(cluster) == (False, False, False, False, False)
    assert use_every_part(role_url(cluster.port, "airflow")) == "carerix"
    with psycopg.connect(f"host=127.0.0.1 port={cluster.port} user=postgres dbname=airflow") as conn:
        in_public = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert in_public == (0,)


def test_the_compose_init_script_creates_the_role_with_the_password_from_the_environment(
    cluster: PostgresCluster,
) -> None:
    psql = find_pg_bin("psql")
    if psql is None:
        if CI:
            pytest.fail("CI needs psql (the PostgreSQL client) for the compose init script")
        pytest.skip("psql not installed")
    # Quotes and a semicolon reach psql intact (:'password' quotes them). No space: the LISTEN connection
    # cannot take one yet (NotifyListener renders the URL with the space unencoded; libpq refuses it).
    password = 'it\'s-a-"secret";DROP-ROLE-x'
    env = {
        **os.environ,
        "PATH": f"{Path(psql).parent}:{os.environ['PATH']}",
        "POSTGRES_USER": "postgres",
        "CARERIX_STORE_PASSWORD": password,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(cluster.port),
    }
    result = subprocess.run(["bash", "-c", INIT_SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    require_passwords(cluster)
    assert role_attributes(cluster) == (False, False, False, False, False)
    with pytest.raises(StoreUnavailable):
        EventStore(role_url(cluster.port, "carerix", DOC_PASSWORD)).last_sequence()
    assert use_every_part(role_url(cluster.port, "carerix", password)) == "public"


# -- PgBouncer ----------------------------------------------------------------------------------------------


def _pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "pgbouncer"], env=env, capture_output=True, timeout=600
        )
        found = shutil.which("pgbouncer") or (
            "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
        )
        if found:
            return found
    if CI:
        pytest.fail("CI needs Debian's pgbouncer for the PgBouncer tests (apt-get install failed)")
    pytest.skip("pgbouncer not installed (apt-get install pgbouncer)")


@contextlib.contextmanager
def pgbouncer(pg: PostgresCluster, mode: str, *extra: str) -> Iterator[int]:
    """PgBouncer in ``mode`` in front of ``pg`` on a free port (trusting ``postgres`` and ``carerix``)."""
    binary = _pgbouncer_binary()
    work = Path(tempfile.mkdtemp(prefix="carerix-pgbouncer-"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (work / "users.txt").write_text('"postgres" ""\n"carerix" ""\n')
    (work / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host=127.0.0.1 port={pg.port}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {work / 'users.txt'}",
                f"pool_mode = {mode}",
                "default_pool_size = 4",
                f"logfile = {work / 'pgbouncer.log'}",
                *extra,
                "",
            ]
        )
    )
    prefix: list[str] = []
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        user = _os_user_for_root()
        for path in (work, *work.iterdir()):
            shutil.chown(path, user=user)
        prefix = ["runuser", "-u", user, "--"]
    proc = subprocess.Popen(
        [*prefix, binary, str(work / "pgbouncer.ini")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"pgbouncer did not start: {proc.stderr.read() if proc.stderr else ''}"
                    ) from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def bouncer_url(port: int, database: str = "carerix") -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"


def session_settings(url: str) -> tuple[str, str, str]:
    store = EventStore(url)
    try:
        store.last_sequence()
        with store.engine.connect() as conn:
            return tuple(  # type: ignore[return-value]
                conn.execute(sa.text(f"SHOW {name}")).scalar_one()
                for name in ("lock_timeout", "idle_in_transaction_session_timeout", "statement_timeout")
            )
    finally:
        store.close()


@pytest.fixture
def store_db(postgres_cluster: PostgresCluster) -> str:
    """A fresh store database on the session's cluster (these tests create no role)."""
    url = postgres_cluster.create_database()
    EventStore(url).last_sequence()  # the schema, created directly
    return url


def via(port: int, store_db: str) -> str:
    """``store_db`` through the PgBouncer on ``port``."""
    return bouncer_url(port, store_db.rsplit("/", 1)[1])


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_pgbouncer_refuses_the_store_startup_options(
    postgres_cluster: PostgresCluster, store_db: str, mode: str
) -> None:
    with pgbouncer(postgres_cluster, mode) as port, pytest.raises(StoreUnavailable) as refused:
        EventStore(via(port, store_db)).last_sequence()
    assert "unsupported startup parameter: options" in str(refused.value.__cause__)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_ignored_startup_options_are_silently_not_applied(
    postgres_cluster: PostgresCluster, store_db: str, mode: str
) -> None:
    assert session_settings(store_db) == ("1s", "5s", "10s")  # directly: the store's own settings
    with pgbouncer(postgres_cluster, mode, "ignore_startup_parameters = options") as port:
        assert session_settings(via(port, store_db)) == ("0", "0", "0")


def test_the_role_settings_on_the_page_apply_through_pgbouncer(cluster: PostgresCluster) -> None:
    superuser(cluster, OWN_DATABASE)
    superuser(cluster, ROLE_SETTINGS)
    with pgbouncer(cluster, "session", "ignore_startup_parameters = options") as port:
        url = f"postgresql+psycopg://carerix:{DOC_PASSWORD}@127.0.0.1:{port}/carerix"
        assert session_settings(url) == ("1s", "5s", "10s")  # created the schema through it, too


@pytest.mark.parametrize(
    ("mode", "arrives"), [("direct", True), ("session", True), ("transaction", False)], ids=str
)
def test_notify_reaches_listeners_except_through_transaction_pooling(
    postgres_cluster: PostgresCluster, store_db: str, mode: str, arrives: bool
) -> None:
    writer = EventStore(store_db)
    try:
        if mode == "direct":
            assert asyncio.run(notified(store_db, writer, wait=5.0))
            return
        with pgbouncer(postgres_cluster, mode, "ignore_startup_parameters = options") as port:
            # A positive control first: the same listener directly.
            assert asyncio.run(notified(store_db, writer, wait=5.0))
            got = asyncio.run(notified(via(port, store_db), writer, wait=5.0 if arrives else 3.0))
            assert got is arrives
    finally:
        writer.close()


@pytest.mark.parametrize(("mode", "breaks"), [("transaction", True), ("session", False)])
def test_prepared_statements_break_through_transaction_pooling(
    postgres_cluster: PostgresCluster, store_db: str, mode: str, breaks: bool
) -> None:
    """The store's own engine (psycopg 3, prepare_threshold 5): two of its connections run the same statement
    in turn, each in its own committed transaction. With ``server_round_robin`` PgBouncer hands each
    transaction the server connection idle longest, so the statement prepared on one server connection is
    executed on another: deterministic here, timing-dependent with PgBouncer's default (see ``measure``)."""
    with pgbouncer(
        postgres_cluster, mode, "ignore_startup_parameters = options", "server_round_robin = 1"
    ) as port:
        store = EventStore(via(port, store_db))
        try:
            store.last_sequence()
            errors: list[str] = []
            with store.engine.connect() as a, store.engine.connect() as b:
                for i in range(12):
                    for conn in (a, b):
                        try:
                            conn.execute(
                                sa.text("SELECT count(*) FROM carerix_events WHERE sequence > :s"), {"s": i}
                            )
                            conn.commit()
                        except sa.exc.DBAPIError as exc:
                            errors.append(str(exc.orig).splitlines()[0])
                            conn.rollback()
        finally:
            store.close()
    if breaks:
        assert errors and all("prepared statement" in e for e in errors), errors
    else:
        assert errors == []


# -- the figures on the page ------------------------------------------------------------------------------


def measure(runs: int = 5, threads: int = 4, per_thread: int = 50) -> None:
    """Concurrent inserts through PgBouncer (its default LIFO server choice) in each mode; prints the failures
    of each run. Needs initdb/pg_ctl and pgbouncer."""
    with PostgresCluster(fsync=False) as pg:
        url = pg.create_database("carerix")
        EventStore(url).last_sequence()
        for mode in ("transaction", "session"):
            for run in range(runs):
                with pgbouncer(pg, mode, "ignore_startup_parameters = options") as port:
                    store = EventStore(bouncer_url(port))
                    failures: Counter[str] = Counter()

                    def work(k: int) -> None:
                        for _ in range(per_thread):
                            try:
                                store_event(store)  # noqa: B023 - run within this iteration
                            except Exception as exc:
                                cause = exc.__cause__ or exc
                                failures[str(cause).splitlines()[0][:60]] += 1  # noqa: B023

                    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
                    for w in workers:
                        w.start()
                    for w in workers:
                        w.join()
                    store.close()
                total = threads * per_thread
                print(
                    f"{mode:11} run {run + 1}: {sum(failures.values())} of {total} inserts failed {dict(failures)}"
                )


if __name__ == "__main__":
    measure(*(int(a) for a in sys.argv[1:]))
