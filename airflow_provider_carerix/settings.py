"""Every setting of the provider, where each is read from, and in which order: one module for every component.

The receiver (standalone and inside the API server), the triggers, the sensor, ``claim()``, the operators,
every CLI command and the Carerix page all read their configuration here, so two components on two machines
cannot follow two different rules and silently part ways.

**Simple settings** (one value each, :data:`SETTINGS`) are read in this order, first found wins:

1. the environment, ``AIRFLOW__CARERIX__<OPTION>`` (``_CMD`` and ``_SECRET`` variants for sensitive
   options, as for any Airflow option),
2. the older environment name where one exists (``CARERIX_EVENT_STORE_URL``, ``CARERIX_RECEIVER_SECRET``,
   ...), kept working; when both names are set to different values that is an error, not a guess,
3. ``[carerix] <option>`` in ``airflow.cfg``,
4. the default.

**The event store** (:func:`resolve_store`) is found in this order:

1. the Airflow connection named by ``event_store_conn_id`` (default ``carerix_event_store``), wherever
   Airflow connections are reachable (tasks, triggers, the API server, the CLIs where Airflow is
   configured, environment variables ``AIRFLOW_CONN_*`` and secrets backends everywhere),
2. an explicit URL (``--store``, ``store_url=``),
3. ``event_store_url`` as above (environment, then ``airflow.cfg``),
4. the embedded default, ``sqlite:///$AIRFLOW_HOME/carerix_events.db``.

A store given by the connection *and* another source that names a different store is a configuration
error: one component that cannot see the connection would follow the other source and write (or read) a
store nobody else looks at. Every component logs the store it uses and where that choice came from
(:class:`StoreLocation`), with the password hidden.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SETTINGS",
    "ConfigurationError",
    "Setting",
    "StoreLocation",
    "Value",
    "airflow_metadata_db",
    "get",
    "get_bool",
    "get_float",
    "get_int",
    "normalise_store_url",
    "resolve_store",
    "same_store",
    "use_airflow_metadata_db",
    "where_airflow_looks",
]

SECTION = "carerix"


class ConfigurationError(ValueError):
    """A setting is missing, malformed or contradicts another: says which, from where, and what was expected."""


@dataclass(frozen=True)
class Setting:
    """One ``[carerix]`` option: ``AIRFLOW__CARERIX__<OPTION>`` in the environment."""

    option: str
    default: str
    description: str
    #: Which components read it (for the documentation's table).
    read_by: str
    #: The environment name this setting had before it was an Airflow option (still honoured).
    legacy_env: str | None = None
    sensitive: bool = False
    example: str | None = None

    @property
    def env(self) -> str:
        return f"AIRFLOW__{SECTION.upper()}__{self.option.upper()}"


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "event_store_conn_id",
        "carerix_event_store",
        "Airflow connection that holds the event store (type postgres or sqlite, or a URL in its extra "
        '{"url": ...}). Looked up first wherever connections are reachable; if it does not exist, '
        "event_store_url is used.",
        "every component",
        example="carerix_event_store",
    ),
    Setting(
        "event_store_url",
        "",
        "SQLAlchemy URL of the event store, for components without the connection. Empty: "
        "sqlite:///$AIRFLOW_HOME/carerix_events.db (one machine only).",
        "every component",
        legacy_env="CARERIX_EVENT_STORE_URL",
        sensitive=True,
        example="postgresql+psycopg://carerix@db:5432/carerix",
    ),
    Setting(
        "receiver_secret",
        "",
        "Shared secret(s), comma-separated during a rotation, that Carerix sends in the receiver's secret "
        "header. Setting it mounts the receiver at /carerix/events in the API server.",
        "receiver (API server and carerix-receiver serve)",
        legacy_env="CARERIX_RECEIVER_SECRET",
        sensitive=True,
    ),
    Setting(
        "receiver_secret_header",
        "X-Carerix-Secret",
        "Header that carries the receiver secret (a customHeader of the webhook).",
        "receiver",
        legacy_env="CARERIX_RECEIVER_SECRET_HEADER",
        example="X-Carerix-Secret",
    ),
    Setting(
        "receiver_public_key_file",
        "",
        "PEM file with an RSA public key every delivery's Cx-Signature must verify against (keys recorded "
        "per application by provisioning are checked without it).",
        "receiver",
        legacy_env="CARERIX_RECEIVER_PUBLIC_KEY_FILE",
        example="/etc/carerix/cx-signature.pem",
    ),
    Setting(
        "receiver_trusted_proxies",
        "",
        "Comma-separated addresses or CIDRs of proxies whose X-Forwarded-For the standalone receiver "
        "believes (the API server has its own setting).",
        "carerix-receiver serve",
        legacy_env="CARERIX_RECEIVER_TRUSTED_PROXIES",
        example="10.0.0.0/8",
    ),
    Setting(
        "receiver_allow_unsigned_applications",
        "False",
        "Once a signing key is recorded, deliveries that name no application with a recorded key are refused "
        "(401); True admits them by the secret alone.",
        "receiver",
        example="False",
    ),
    Setting(
        "receiver_max_body",
        "1048576",
        "Largest delivery body in bytes (413 above it).",
        "receiver",
        example="1048576",
    ),
    Setting(
        "receiver_body_timeout",
        "10",
        "Seconds a delivery's body has to arrive in full once its request head is in (408 after).",
        "receiver",
        example="10",
    ),
    Setting(
        "receiver_min_body_rate",
        "1024",
        "Bytes per second a body must keep up with after its first second (408 below it; 0: no minimum).",
        "receiver",
        example="1024",
    ),
    Setting(
        "receiver_max_header_bytes",
        "16384",
        "Largest request head in bytes (431 above it); inside the API server the only head limit there is.",
        "receiver",
        example="16384",
    ),
    Setting(
        "receiver_silence_warning",
        "15m",
        "Readers of the store (watchers, sensor, claim) warn when no receiver has recorded a heartbeat in it "
        "for this long: the receiver probably writes to another store. 0 turns the warning off.",
        "triggers, sensor, claim()",
        example="1h",
    ),
)
_BY_OPTION = {s.option: s for s in SETTINGS}


@dataclass(frozen=True)
class Value:
    """A setting's value and where it came from (``source`` never holds the value)."""

    value: str
    source: str

    @property
    def is_default(self) -> bool:
        return self.source == "default"


def _conf() -> Any | None:
    # Lazy: ``carerix-webhooks validate`` and the emulator must start without loading Airflow's config.
    try:
        from airflow.configuration import conf
    except Exception:
        return None
    return conf


def _env_value(name: str, form: str) -> str:
    """An environment variable's value; the ``_CMD`` form runs the command and the ``_SECRET`` form asks the
    secrets backend, with Airflow's own helpers (as Airflow does for its sensitive options). ``form`` is
    given, not read off the name: ``AIRFLOW__CARERIX__RECEIVER_SECRET`` itself ends in ``_SECRET``."""
    raw = os.environ[name]
    if form == "cmd":
        from airflow.configuration import run_command

        return str(run_command(raw))
    if form == "secret":
        # A method of the config parser on Airflow 3.2+, a module function on 3.1.
        getter: Any = getattr(_conf(), "_get_config_value_from_secret_backend", None)
        if getter is None:
            import airflow.configuration

            getter = getattr(airflow.configuration, "_get_config_value_from_secret_backend")  # noqa: B009
        return str(getter(raw) or "")
    return raw


def get(option: str) -> Value:
    """The value of ``[carerix] option`` and its source, in the order of the module docstring."""
    setting = _BY_OPTION[option]
    found: list[Value] = []
    forms = [(setting.env, "plain")]
    if setting.sensitive:
        forms += [(f"{setting.env}_CMD", "cmd"), (f"{setting.env}_SECRET", "secret")]
    for name, form in forms:
        if os.environ.get(name) is not None:
            found.append(Value(_env_value(name, form).strip(), f"environment variable {name}"))
            break
    if setting.legacy_env and os.environ.get(setting.legacy_env) is not None:
        found.append(
            Value(os.environ[setting.legacy_env].strip(), f"environment variable {setting.legacy_env}")
        )
    if len(found) == 2 and found[0].value != found[1].value and found[0].value and found[1].value:
        raise ConfigurationError(
            f"{found[0].source} and {found[1].source} are both set, to different values: they are two names "
            f"of [carerix] {option}; keep one ({setting.env})"
        )
    for value in found:
        if value.value:
            return value
    if found:  # set, to nothing: e.g. AIRFLOW__CARERIX__EVENT_STORE_CONN_ID= (no connection lookup)
        return found[0]
    conf = _conf()
    if conf is not None:
        try:
            raw = conf.get(SECTION, option, fallback=None)
        except Exception as exc:
            raise ConfigurationError(f"[{SECTION}] {option}: cannot be read ({type(exc).__name__})") from None
        if raw is not None and raw.strip() and raw.strip() != setting.default:
            return Value(raw.strip(), f"airflow.cfg [{SECTION}] {option}")
    return Value(setting.default, "default")


def get_list(option: str) -> tuple[list[str], str]:
    """A comma-separated setting as a list (surrounding spaces and tabs dropped), with its source."""
    value = get(option)
    return [part.strip(" \t") for part in value.value.split(",") if part.strip(" \t")], value.source


def _typed(option: str, kind: str, convert: Any, minimum: float | None = None) -> Any:
    value = get(option)
    try:
        result = convert(value.value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"[{SECTION}] {option}: expected {kind}, got {value.value!r} (from {value.source})"
        ) from None
    if minimum is not None and result < minimum:
        raise ConfigurationError(
            f"[{SECTION}] {option}: expected {kind} of at least {minimum:g}, got {value.value!r} "
            f"(from {value.source})"
        )
    return result


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "t", "1", "yes", "on"):
        return True
    if lowered in ("false", "f", "0", "no", "off", ""):
        return False
    raise ValueError(text)


def get_bool(option: str) -> bool:
    """``True``/``False`` (and Airflow's other spellings of them); anything else is an error naming the source."""
    return bool(_typed(option, "true or false", _bool))


def get_int(option: str, minimum: int | None = None) -> int:
    return int(_typed(option, "a whole number", int, minimum))


def get_float(option: str, minimum: float | None = None) -> float:
    return float(_typed(option, "a number", float, minimum))


# -- the event store ----------------------------------------------------------------------------------------


def normalise_store_url(url: str) -> str:
    """``postgresql://`` would pick psycopg2, which the ``postgres`` extra does not install."""
    url = url.strip()
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _display(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable URL>"


def same_store(a: str, b: str) -> bool:
    """Whether two URLs name the same store (driver, host, port, database; SQLite: the same file)."""
    from sqlalchemy.engine import make_url

    try:
        ua, ub = make_url(normalise_store_url(a)), make_url(normalise_store_url(b))
    except Exception:
        return a == b
    if ua.get_backend_name() != ub.get_backend_name():
        return False
    if ua.get_backend_name() == "sqlite":
        da, db = ua.database or "", ub.database or ""
        if da in ("", ":memory:") or db in ("", ":memory:"):
            return da == db
        return os.path.realpath(os.path.expanduser(da)) == os.path.realpath(os.path.expanduser(db))
    return (ua.host or "localhost", ua.port or 5432, ua.database, ua.username) == (
        ub.host or "localhost",
        ub.port or 5432,
        ub.database,
        ub.username,
    )


@dataclass(frozen=True)
class StoreLocation:
    """The store a component uses and why: ``url`` holds the password (never log it), ``display`` not."""

    url: str
    source: str

    @property
    def display(self) -> str:
        return _display(self.url)

    def describe(self) -> str:
        """For start-up logs: ``sqlite:////x.db (from the Airflow connection 'carerix_event_store')``."""
        return f"{self.display} (from {self.source})"

    def __repr__(self) -> str:
        return f"StoreLocation({self.display!r}, source={self.source!r})"


def default_store_url() -> str:
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return f"sqlite:///{Path(home) / 'carerix_events.db'}"


def resolve_store(
    explicit_url: str | None = None,
    *,
    connection: tuple[str, str] | None = None,
) -> StoreLocation:
    """Where the event store is: ``connection`` is ``(url, conn_id)`` when the connection was found.

    Raises :class:`ConfigurationError` when the connection and another source name different stores.
    """
    candidates: list[StoreLocation] = []
    if connection is not None:
        candidates.append(
            StoreLocation(normalise_store_url(connection[0]), f"the Airflow connection {connection[1]!r}")
        )
    if explicit_url and explicit_url.strip():
        candidates.append(StoreLocation(normalise_store_url(explicit_url), "an explicit store URL"))
    configured = get("event_store_url")
    if configured.value:
        candidates.append(StoreLocation(normalise_store_url(configured.value), configured.source))
    if not candidates:
        home = os.environ.get("AIRFLOW_HOME") or "~/airflow"
        return StoreLocation(default_store_url(), f"the default (no store configured; AIRFLOW_HOME={home})")
    chosen = candidates[0]
    if connection is not None:
        for other in candidates[1:]:
            if not same_store(chosen.url, other.url):
                raise ConfigurationError(
                    f"two different event stores are configured: {chosen.describe()} and "
                    f"{other.describe()}. A component that cannot see the connection would use the other "
                    "one, and events written to one never reach readers of the other: configure one store "
                    "(remove one of them, or make them name the same database)"
                )
    return chosen


# -- Airflow's metadata database for command-line tools -----------------------------------------------------


def airflow_metadata_db() -> str | None:
    """The metadata database's URL (password hidden) when Airflow is configured on this machine, else None.

    "Configured" means the way Airflow's own CLI would find it: ``sql_alchemy_conn`` set explicitly, or the
    default SQLite file already exists (so a machine without Airflow never gets an empty ``airflow.db``).
    """
    conf = _conf()
    if conf is None:
        return None
    try:
        url = conf.get("database", "sql_alchemy_conn", fallback="") or ""
    except Exception:
        return None
    if not url:
        return None
    explicit = any(
        os.environ.get(f"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN{suffix}") for suffix in ("", "_CMD", "_SECRET")
    )
    if url.startswith("sqlite") and not explicit:
        from sqlalchemy.engine import make_url

        try:
            database = make_url(url).database
        except Exception:
            return None
        if not database or not Path(database).exists():
            return None
    return _display(url)


def _in_a_task() -> bool:
    """A task (or a trigger) asks Airflow for connections through its supervisor, never the database."""
    try:
        from airflow.sdk.execution_time import task_runner
    except Exception:
        return False
    return getattr(task_runner, "SUPERVISOR_COMMS", None) is not None


def reads_metadata_db() -> bool:
    """Whether connection lookups in this process read Airflow's metadata database, decided as Airflow's own
    lookup decides it: a task's supervisor first (a LocalExecutor task inherits the scheduler's
    ``_AIRFLOW_PROCESS_CONTEXT=server`` but may not touch the database), then the process context."""
    return not _in_a_task() and os.environ.get("_AIRFLOW_PROCESS_CONTEXT") == "server"


def use_airflow_metadata_db() -> str | None:
    """Let connection and Variable lookups in this process read Airflow's metadata database, as
    ``airflow connections get`` does, when Airflow is configured here and this is not a task.

    Returns where the metadata database is (password hidden), or None when it is not used. Inside a task or
    a trigger Airflow itself answers lookups (through its API), so nothing changes there.
    """
    if _in_a_task():
        return None
    if os.environ.get("_AIRFLOW_PROCESS_CONTEXT"):
        return airflow_metadata_db() if os.environ["_AIRFLOW_PROCESS_CONTEXT"] == "server" else None
    where = airflow_metadata_db()
    if where is not None:
        os.environ["_AIRFLOW_PROCESS_CONTEXT"] = "server"
    return where


def where_airflow_looks(kind: str, key: str) -> str:
    """Where a connection (``kind="connection"``) or Variable lookup in this process looked, for errors.

    Mirrors Airflow's search path: environment variables, a configured secrets backend, and the metadata
    database when this process may read it (:func:`use_airflow_metadata_db`).
    """
    env = f"AIRFLOW_CONN_{key.upper()}" if kind == "connection" else f"AIRFLOW_VAR_{key.upper()}"
    places = [f"the environment variable {env}"]
    conf = _conf()
    backend = ""
    if conf is not None:
        try:
            backend = conf.get("secrets", "backend", fallback="") or ""
        except Exception:
            backend = ""
    if backend.strip():
        places.append(f"the secrets backend {backend.strip().rsplit('.', 1)[-1]}")
    if reads_metadata_db():
        where = airflow_metadata_db()
        places.append(f"Airflow's metadata database ({where})" if where else "Airflow's metadata database")
    else:
        places.append(
            "not Airflow's metadata database (Airflow is not configured on this machine: no "
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN and no $AIRFLOW_HOME/airflow.db)"
        )
    return ", ".join(places[:-1]) + " and " + places[-1] if len(places) > 1 else places[0]
