"""docs/deployment.md cannot drift from the code: its snippets are parsed, resolved and run as far as this
machine allows (no Docker engine, no Kubernetes cluster).

* every YAML block parses; every ``AIRFLOW__CARERIX__*`` name is a setting of :mod:`airflow_provider_carerix.settings`;
* every ``AIRFLOW_CONN_*`` value on the page (shell exports, the compose file, Kubernetes secrets referenced by
  the chart's values and the receiver Deployment) is read by the provider's own resolution in a fresh process
  and names the same PostgreSQL store;
* the compose file's merged environment of each Airflow service resolves to that store, and only the API server
  gets the receiver secret;
* the ``_CMD`` form of the receiver secret is run by Airflow and reads the mounted file;
* every Kubernetes secret and key the values and manifests refer to is defined on the page;
* the ingress routes nothing but the path where the plugin mounts the receiver, within the receiver's limits;
* the Dockerfile and the README install this distribution with an extra it has; the standalone receiver's
  command line parses and its probes exist;
* ``airflow connections add`` from the page, run against a real metadata database, and the page's store-id
  command give the id of the real store (PostgreSQL).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from airflow_provider_carerix import settings
from tests.test_docs import Block, blocks

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "deployment.md"
BIN = Path(sys.executable).parent
BLOCKS = blocks(PAGE)
YAML_BLOCKS = [b for b in BLOCKS if b.lang == "yaml"]
STORE_CONN = "AIRFLOW_CONN_CARERIX_EVENT_STORE"
STORE_SOURCE = "the Airflow connection 'carerix_event_store'"
# What the page's ${...} placeholders (compose's .env) stand for in these tests.
PLACEHOLDERS = {
    "CARERIX_STORE_PASSWORD": "store-pw/with:odd@chars",
    "CARERIX_RECEIVER_SECRET": "receiver-secret-value",
    "AIRFLOW_PROJ_DIR": ".",
    "AIRFLOW_UID": "50000",
}


def _id(block: Block) -> str:
    return f"deployment.md:{block.line}"


def interpolate(text: str) -> str:
    """Compose's ``${NAME}`` / ``${NAME:-default}`` with :data:`PLACEHOLDERS`; an unknown name is an error."""

    def one(m: re.Match[str]) -> str:
        name, default = m["name"], m["default"]
        if name in PLACEHOLDERS:
            return PLACEHOLDERS[name]
        if default is not None:
            return default
        raise AssertionError(f"deployment.md uses ${{{name}}}, unknown to this test")

    return re.sub(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?::-(?P<default>[^}]*))?\}", one, text)


def yaml_documents() -> Iterator[tuple[Block, Any]]:
    for block in YAML_BLOCKS:
        for doc in yaml.safe_load_all(block.body):
            if doc is not None:
                yield block, doc


def kubernetes(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in yaml_documents() if isinstance(doc, dict) and doc.get("kind") == kind]


def compose_file() -> dict[str, Any]:
    found = [doc for _, doc in yaml_documents() if isinstance(doc, dict) and "services" in doc]
    assert len(found) == 1, "expected one docker-compose block (with services:) on the page"
    return found[0]


def helm_values() -> list[dict[str, Any]]:
    return [
        doc
        for _, doc in yaml_documents()
        if isinstance(doc, dict) and "kind" not in doc and "services" not in doc and "webhooks" not in doc
    ]


def secrets() -> dict[str, dict[str, str]]:
    """Kubernetes secrets defined on the page: name -> {key: value}."""
    return {s["metadata"]["name"]: dict(s.get("stringData") or {}) for s in kubernetes("Secret")}


def resolve(envs: list[dict[str, str]], tmp_path: Path) -> list[dict[str, Any]]:
    """For each environment: the store and the receiver secret as a fresh process sees them, through the
    provider's own resolution (the one every component uses)."""
    script = """
import json, os, sys
base = dict(os.environ)
out = []
for env in json.load(sys.stdin):
    os.environ.clear(); os.environ.update(base); os.environ.update(env)
    from airflow_provider_carerix import settings
    from airflow_provider_carerix.hooks.event_store import locate_store
    try:
        where = locate_store()
        out.append({"url": where.url, "source": where.source,
                    "receiver_secret": settings.get("receiver_secret").value})
    except Exception as exc:
        out.append({"error": f"{type(exc).__name__}: {exc}"})
print("RESULT " + json.dumps(out))
"""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CARERIX_", "_AIRFLOW"))}
    base.update({"AIRFLOW_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)})
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(envs),
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, result.stderr[-3000:]
    return json.loads(line[len("RESULT ") :])


def store_connection_values() -> list[tuple[str, str, str]]:
    """(where on the page, variable name, value) of every AIRFLOW_CONN_* the page sets."""
    found: list[tuple[str, str, str]] = []
    for block in BLOCKS:
        if block.lang == "bash":
            for m in re.finditer(r"\b(AIRFLOW_CONN_\w+)='([^']*)'", block.body):
                found.append((_id(block), m[1], m[2]))

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and key.startswith("AIRFLOW_CONN_") and isinstance(value, str):
                    found.append((where, key, value))
                else:
                    walk(value, where)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    defined = secrets()
    for block, doc in yaml_documents():
        if isinstance(doc, dict) and doc.get("kind") == "Secret":
            continue  # reached through what refers to them, below
        walk(doc, _id(block))
        for ref in _secret_refs(doc):
            if ref["env"].startswith("AIRFLOW_CONN_"):
                found.append(
                    (f"{_id(block)} secret {ref['name']}", ref["env"], defined[ref["name"]][ref["key"]])
                )
    return found


def _secret_refs(doc: Any) -> list[dict[str, str]]:
    """Every (environment variable, secret, key) a values file or manifest takes from a Kubernetes secret."""
    refs: list[dict[str, str]] = []
    if not isinstance(doc, dict):
        return refs
    for entry in doc.get("secret") or []:  # the chart's `secret:` list
        refs.append(
            {"env": entry["envName"], "name": entry["secretName"], "key": entry.get("secretKey", "value")}
        )

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = (node.get("valueFrom") or {}).get("secretKeyRef")
            if ref and "name" in node:
                refs.append({"env": node["name"], "name": ref["name"], "key": ref["key"]})
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    return refs


# -- the page as text -------------------------------------------------------------------------------------


def test_the_page_has_the_blocks_this_test_reads() -> None:
    langs = [b.lang for b in BLOCKS]
    assert langs.count("yaml") >= 6 and "dockerfile" in langs and langs.count("sql") >= 3, langs


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=_id)
def test_yaml_block_parses(block: Block) -> None:
    docs = [d for d in yaml.safe_load_all(block.body) if d is not None]
    assert docs, f"{_id(block)}: empty YAML block"


def test_every_carerix_setting_named_exists() -> None:
    text = PAGE.read_text()
    options = {s.option for s in settings.SETTINGS}
    named = re.findall(r"AIRFLOW__CARERIX__([A-Z0-9_]+)", text)
    assert named, "the page names no AIRFLOW__CARERIX__ setting"
    unknown = set()
    for name in named:
        option = re.sub(r"_(CMD|SECRET)$", "", name).lower() if name.lower() not in options else name.lower()
        if option not in options:
            unknown.add(name)
    assert not unknown, f"not settings of the provider: {sorted(unknown)} (known: {sorted(options)})"
    mentioned = set(re.findall(r"`([a-z_]+)`", text)) & {
        "receiver_secret",
        "receiver_silence_warning",
        "event_store_url",
    }
    assert mentioned <= options


# -- connections ------------------------------------------------------------------------------------------


def test_every_store_connection_on_the_page_resolves_to_the_postgresql_store(tmp_path: Path) -> None:
    values = store_connection_values()
    wheres = {where for where, _, _ in values}
    assert len(values) >= 5 and len(wheres) >= 4, values
    assert {name for _, name, _ in values} == {STORE_CONN}, values
    resolved = resolve([{STORE_CONN: interpolate(value)} for _, _, value in values], tmp_path)
    for (where, _, value), got in zip(values, resolved, strict=True):
        assert "error" not in got, f"{where}: {value!r} -> {got['error']}"
        assert got["source"] == STORE_SOURCE, (where, got)
        url = got["url"]
        assert url.startswith("postgresql+psycopg://carerix:") and url.endswith(":5432/carerix"), (where, got)
    # The compose password travels through JSON with characters a URL would need encoded.
    compose = [got for (where, _, value), got in zip(values, resolved, strict=True) if "${" in value]
    assert compose and all("store-pw%2Fwith%3Aodd%40chars@postgres:5432" in got["url"] for got in compose)


def test_compose_services_find_one_store_and_only_the_api_server_gets_the_receiver_secret(
    tmp_path: Path,
) -> None:
    compose = compose_file()
    services = compose["services"]
    airflow = {name: svc for name, svc in services.items() if name.startswith("airflow-")}
    assert set(airflow) >= {
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
    }
    envs = []
    for name, svc in airflow.items():
        assert svc.get("build") == ".", f"{name} does not build the image with the provider"
        env = {k: interpolate(str(v)) for k, v in (svc.get("environment") or {}).items()}
        envs.append(env)
    results = dict(zip(airflow, resolve(envs, tmp_path), strict=True))
    urls = {name: r.get("url", r.get("error")) for name, r in results.items()}
    assert len(set(urls.values())) == 1, urls
    assert all(r["source"] == STORE_SOURCE for r in results.values()), results
    with_secret = {name for name, r in results.items() if r["receiver_secret"]}
    assert with_secret == {"airflow-apiserver"}, with_secret
    assert results["airflow-apiserver"]["receiver_secret"] == PLACEHOLDERS["CARERIX_RECEIVER_SECRET"]
    # The worker renders the webhook spec's header from the Variable (carerix_receiver_secret).
    assert services["airflow-worker"]["environment"]["AIRFLOW_VAR_CARERIX_RECEIVER_SECRET"]
    postgres = services["postgres"]
    assert "./carerix-store.sh:/docker-entrypoint-initdb.d/carerix-store.sh:ro" in postgres["volumes"]
    assert "CARERIX_STORE_PASSWORD" in postgres["environment"]


def test_without_the_connection_each_container_would_use_its_own_sqlite_file(tmp_path: Path) -> None:
    """The page's explanation of the split: the image's AIRFLOW_HOME, and the default store under it."""
    (got,) = resolve([{"AIRFLOW_HOME": "/opt/airflow"}], tmp_path)
    assert got["url"] == "sqlite:////opt/airflow/carerix_events.db"
    assert "sqlite:////opt/airflow/carerix_events.db" in PAGE.read_text()
    shared = {interpolate(v).split(":")[1] for v in compose_file()["x-airflow-common"]["volumes"]}
    assert shared == {"/opt/airflow/dags", "/opt/airflow/logs", "/opt/airflow/config", "/opt/airflow/plugins"}


# -- Kubernetes -------------------------------------------------------------------------------------------


def test_every_kubernetes_secret_referred_to_is_defined_with_that_key() -> None:
    defined = secrets()
    assert {"carerix-event-store", "carerix-receiver"} <= set(defined)
    refs = [ref for _, doc in yaml_documents() for ref in _secret_refs(doc)]
    assert len(refs) >= 5, refs
    for ref in refs:
        assert ref["key"] in defined.get(ref["name"], {}), f"{ref} is not defined on the page"
    for values in helm_values():
        for volume in (values.get("apiServer") or {}).get("extraVolumes") or []:
            assert volume["secret"]["secretName"] in defined, volume


def test_the_receiver_secret_cmd_reads_the_file_mounted_into_the_api_server(tmp_path: Path) -> None:
    (values,) = [v for v in helm_values() if "apiServer" in v]
    api = values["apiServer"]
    (env,) = api["env"]
    (mount,) = api["extraVolumeMounts"]
    (volume,) = api["extraVolumes"]
    assert mount["name"] == volume["name"] and mount["readOnly"] is True
    assert env["name"] == "AIRFLOW__CARERIX__RECEIVER_SECRET_CMD"
    command = shlex.split(env["value"])
    path = Path(command[-1])
    assert path.parent == Path(mount["mountPath"]) and path.name in secrets()[volume["secret"]["secretName"]]
    # As the pod would see it: the secret's key as a file in the mounted directory; Airflow runs the command.
    (tmp_path / path.name).write_text("from-the-mounted-secret\n")
    local = env["value"].replace(mount["mountPath"], str(tmp_path))
    (got,) = resolve([{"AIRFLOW__CARERIX__RECEIVER_SECRET_CMD": local}], tmp_path)
    assert got["receiver_secret"] == "from-the-mounted-secret"


def test_the_ingress_routes_only_the_receiver_within_its_limits() -> None:
    from airflow_provider_carerix.plugins import URL_PREFIX
    from airflow_provider_carerix.receiver.app import DEFAULT_ACK_TIMEOUT
    from airflow_provider_carerix.receiver.validation import DEFAULT_MAX_BODY

    (ingress,) = kubernetes("Ingress")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths, ingress
    for path in paths:
        assert (path["path"], path["pathType"]) == (f"{URL_PREFIX}/events", "Exact"), path
        assert path["backend"]["service"] == {"name": "airflow-api-server", "port": {"name": "api-server"}}
    annotations = ingress["metadata"]["annotations"]
    body = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert body == "1m" and DEFAULT_MAX_BODY == 1024 * 1024
    assert float(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > DEFAULT_ACK_TIMEOUT
    assert f"https://hooks.example.com{URL_PREFIX}/events" in PAGE.read_text()


def test_the_standalone_receiver_deployment_parses_and_its_probes_exist(tmp_path: Path) -> None:
    import typer

    from airflow_provider_carerix.receiver import create_app
    from airflow_provider_carerix.receiver.cli import cli

    (deployment,) = kubernetes("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:2] == ["carerix-receiver", "serve"]
    group = typer.main.get_command(cli)
    serve = group.commands["serve"]  # type: ignore[attr-defined]
    ctx = serve.make_context("serve", list(command[2:]))  # an unknown option or bad value raises here
    assert (ctx.params["host"], ctx.params["port"]) == ("0.0.0.0", 8090)
    port = next(p for p in container["ports"] if p["name"] == container["readinessProbe"]["httpGet"]["port"])
    assert port["containerPort"] == 8090
    (service,) = kubernetes("Service")
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    routes = {r.path for r in create_app(f"sqlite:///{tmp_path / 'e.db'}", secrets=["x"]).routes}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes, (probe, sorted(routes))
    assert {e["name"] for e in container["env"]} == {STORE_CONN, "AIRFLOW__CARERIX__RECEIVER_SECRET"}


# -- installing -------------------------------------------------------------------------------------------


def _project() -> dict[str, Any]:
    """Name, extras and URLs of this distribution as installed (its metadata, built from pyproject.toml)."""
    meta = metadata("airflow-provider-carerix")
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    return {"name": meta["Name"], "extras": set(meta.get_all("Provides-Extra") or []), "urls": urls}


def _default_airflow() -> str:
    m = re.search(r"^DEFAULT_AIRFLOW_VERSION=(\S+)$", (ROOT / "scripts" / "bootstrap.sh").read_text(), re.M)
    assert m
    return m[1]


def _pip_requirements(command: str) -> list[Requirement]:
    words = shlex.split(command.replace("\\\n", " "))
    start = words.index("install") + 1
    reqs, skip = [], False
    for word in words[start:]:
        if skip:
            skip = False
            continue
        if word in ("--find-links", "--constraint", "-c", "-f"):
            skip = True
            continue
        if not word.startswith("-"):
            reqs.append(Requirement(word))
    return reqs


def _check_requirements(reqs: list[Requirement], where: str) -> None:
    project = _project()
    ours = [r for r in reqs if r.name == project["name"]]
    assert ours, f"{where}: does not install {project['name']}"
    for req in ours:
        assert req.extras <= project["extras"], (where, req)
        assert "postgres" in req.extras, (where, req)
    assert any(r.name == "apache-airflow" and str(r.specifier).startswith("==") for r in reqs), where


def test_the_dockerfile_installs_this_package_the_way_the_image_documents() -> None:
    (block,) = [b for b in BLOCKS if b.lang == "dockerfile"]
    lines = block.body.replace("\\\n", " ").splitlines()
    base = lines[0].split()
    assert base[0] == "FROM" and base[1] == f"apache/airflow:{_default_airflow()}", base
    copy = next(line.split() for line in lines if line.startswith("COPY "))
    (run,) = [line for line in lines if line.startswith("RUN pip install")]
    # The image sets AIRFLOW_VERSION to its own version: pip may then neither up- nor downgrade Airflow.
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in run
    pinned = run.replace("${AIRFLOW_VERSION}", _default_airflow())
    _check_requirements(_pip_requirements(pinned[len("RUN ") :]), _id(block))
    words = shlex.split(run)
    assert words[words.index("--find-links") + 1] == copy[2].rstrip("/") and copy[1] == "dist/"
    assert words[words.index("--constraint") + 1] == "${HOME}/constraints.txt"


def test_the_readme_install_commands_name_this_package() -> None:
    readme = (ROOT / "README.md").read_text()
    install = readme[readme.index("## Install") : readme.index("## Try it")]
    commands = re.findall(r"^pip install (.+)$", install, re.M)
    assert commands, install
    first = _pip_requirements("pip install " + commands[0])
    _check_requirements(first, "README install")
    assert Requirement("apache-airflow==" + _default_airflow()) in first or any(
        str(r) == f"apache-airflow=={_default_airflow()}" for r in first
    )
    assert "python -m build --wheel" in install and "--find-links dist" in install
    m = re.search(r'pip install "(airflow-provider-carerix\[postgres\] @ git\+[^"]+)"', install)
    assert m, "the install from the repository is missing"
    url = Requirement(m[1]).url
    assert url and url.removeprefix("git+").removesuffix(".git") == _project()["urls"]["Source"]


# -- against a real metadata database and store -----------------------------------------------------------


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CARERIX_", "_AIRFLOW"))}
    return {
        **env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(ROOT),
    }


def test_connections_add_and_the_store_id_command_find_the_real_store(
    tmp_path: Path, postgres_cluster: Any
) -> None:
    """The page's ``airflow connections add`` into a migrated metadata database, then its store-id command in
    a process with no store configured anywhere else: it names the store from the connection and prints the
    id the store has."""
    from airflow_provider_carerix.store import EventStore

    url = postgres_cluster.create_database("carerix")
    store = EventStore(url)
    expected_id = store.identity().store_id
    store.close()

    env = _clean_env(tmp_path)
    migrated = subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300
    )
    assert migrated.returncode == 0, migrated.stderr[-3000:]

    (add,) = [
        b.body
        for b in BLOCKS
        if b.lang == "bash" and b.body.startswith("airflow connections add carerix_event_store")
    ]
    args = shlex.split(add.replace("\\\n", " "))
    # The page's database server is db.internal; here it is the throwaway cluster (trust authentication).
    args[args.index("--conn-host") + 1] = "127.0.0.1"
    args[args.index("--conn-port") + 1] = str(postgres_cluster.port)
    args[args.index("--conn-login") + 1] = "postgres"
    added = subprocess.run(
        [str(BIN / "airflow"), *args[1:]], env=env, capture_output=True, text=True, timeout=120
    )
    assert added.returncode == 0, added.stderr[-3000:]

    (check,) = [b.body for b in BLOCKS if b.lang == "bash" and "identity().store_id" in b.body]
    words = shlex.split(check)
    assert words[:4] == ["docker", "compose", "exec", "airflow-triggerer"], words
    result = subprocess.run(
        [str(BIN / "python"), *words[5:]], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.endswith(f"(from {STORE_SOURCE}) id {expected_id}"), result.stdout
    assert f"@127.0.0.1:{postgres_cluster.port}/carerix" in last


# -- the log lines quoted on the page ---------------------------------------------------------------------


def test_the_log_lines_on_the_page_are_the_ones_the_code_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow_provider_carerix import plugins
    from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook, locate_store

    quoted = [b.body for b in BLOCKS if b.lang == "" and b.body.startswith(("Carerix", "No Carerix"))]
    mounted, silent = quoted
    text = PAGE.read_text()
    for name in ("CARERIX_EVENT_STORE_URL", "AIRFLOW__CARERIX__EVENT_STORE_URL", "CARERIX_RECEIVER_SECRET"):
        monkeypatch.delenv(name, raising=False)

    # The compose file's connection, as the API server and every other component name it.
    compose_env = compose_file()["x-airflow-common"]["environment"]
    monkeypatch.setenv(STORE_CONN, interpolate(compose_env[STORE_CONN]))
    caplog.set_level("INFO")
    where = locate_store()
    assert f"Carerix event store: {where.describe()}" in caplog.text
    assert f"`Carerix event store: {where.describe()}`" in text.replace("\n", " ")
    # The receiver's line (its store lazily opened: nothing connects to the page's host here).
    monkeypatch.setenv("AIRFLOW__CARERIX__RECEIVER_SECRET", "s")
    app = plugins._receiver_app(where)
    assert app is not None
    app.state.heartbeat.stop()
    assert f"Carerix receiver mounted at /carerix/events, event store {where.describe()}" in caplog.text
    assert mounted == f"Carerix receiver mounted at /carerix/events, event store {where.describe()}"

    # A reader on the image's default store, with no receiver anywhere.
    monkeypatch.delenv(STORE_CONN)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    caplog.clear()
    hook = CarerixEventStoreHook()
    try:
        assert hook.check_receivers() is False
    finally:
        hook.close()
    warning = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("No Carerix receiver"))
    assert warning.replace(str(tmp_path), "/opt/airflow") == silent


def test_every_connections_add_on_the_page_is_the_tested_one_but_for_host_and_password() -> None:
    commands = re.findall(
        r"airflow connections add carerix_event_store(?:[^\n`]|\\\n)*", PAGE.read_text().replace("\\\n", " ")
    )
    assert len(commands) >= 2, commands

    def options(command: str) -> dict[str, str]:
        words = shlex.split(command)[3:]
        return dict(zip(words[1::2][: len(words) // 2], words[2::2], strict=False)) | {"conn_id": words[0]}

    shapes = [options(c) for c in commands]
    for shape in shapes:
        assert shape["conn_id"] == "carerix_event_store" and shape["--conn-type"] == "carerix_event_store", (
            shape
        )
        assert set(shape) == set(shapes[0]), (shape, shapes[0])
        assert (shape["--conn-port"], shape["--conn-schema"], shape["--conn-login"]) == (
            "5432",
            "carerix",
            "carerix",
        )
