"""One configuration model: every setting read in one order, the store found the same way everywhere, and a
deployment split (two stores configured) refused at start-up instead of followed silently."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from airflow_provider_carerix import settings
from airflow_provider_carerix.hooks.event_store import CarerixEventStoreHook, locate_store
from airflow_provider_carerix.settings import ConfigurationError, resolve_store, same_store


@pytest.fixture(autouse=True)
def _no_store_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "CARERIX_EVENT_STORE_URL",
        "AIRFLOW__CARERIX__EVENT_STORE_URL",
        "AIRFLOW_CONN_CARERIX_EVENT_STORE",
        "AIRFLOW__CARERIX__EVENT_STORE_CONN_ID",
        "CARERIX_RECEIVER_SECRET",
        "AIRFLOW__CARERIX__RECEIVER_SECRET",
        "AIRFLOW__CARERIX__RECEIVER_SECRET_CMD",
    ):
        monkeypatch.delenv(name, raising=False)


def sqlite_conn(path: Path, password: str | None = None) -> str:
    conn: dict[str, str] = {"conn_type": "sqlite", "host": str(path)}
    if password:
        conn["password"] = password
    return json.dumps(conn)


# -- simple settings ---------------------------------------------------------------------------------------


def test_a_setting_has_one_airflow_option_and_its_environment_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings.get("receiver_secret_header") == settings.Value("X-Carerix-Secret", "default")
    monkeypatch.setenv("CARERIX_RECEIVER_SECRET_HEADER", "X-Old")
    assert settings.get("receiver_secret_header") == settings.Value(
        "X-Old", "environment variable CARERIX_RECEIVER_SECRET_HEADER"
    )
    monkeypatch.setenv("AIRFLOW__CARERIX__RECEIVER_SECRET_HEADER", "X-Old")  # the same value twice: fine
    assert settings.get("receiver_secret_header").value == "X-Old"
    monkeypatch.setenv("AIRFLOW__CARERIX__RECEIVER_SECRET_HEADER", "X-New")
    with pytest.raises(ConfigurationError) as raised:
        settings.get("receiver_secret_header")
    message = str(raised.value)
    assert (
        "AIRFLOW__CARERIX__RECEIVER_SECRET_HEADER" in message and "CARERIX_RECEIVER_SECRET_HEADER" in message
    )
    assert "X-New" not in message and "X-Old" not in message  # names, never values (they may be secrets)
    monkeypatch.delenv("CARERIX_RECEIVER_SECRET_HEADER")
    assert settings.get("receiver_secret_header") == settings.Value(
        "X-New", "environment variable AIRFLOW__CARERIX__RECEIVER_SECRET_HEADER"
    )


def test_sensitive_settings_take_airflows_cmd_form(monkeypatch: pytest.MonkeyPatch) -> None:
    # The plain name of this option ends in _SECRET itself: it is a value, not a secrets-backend path.
    monkeypatch.setenv("AIRFLOW__CARERIX__RECEIVER_SECRET", "plain-value")
    assert settings.get("receiver_secret").value == "plain-value"
    monkeypatch.delenv("AIRFLOW__CARERIX__RECEIVER_SECRET")
    monkeypatch.setenv("AIRFLOW__CARERIX__RECEIVER_SECRET_CMD", "echo ' from-a-command '")
    value = settings.get("receiver_secret")
    assert value == settings.Value(
        "from-a-command", "environment variable AIRFLOW__CARERIX__RECEIVER_SECRET_CMD"
    )
    # Not for options that are not sensitive (as Airflow): the header name is no secret.
    monkeypatch.setenv("AIRFLOW__CARERIX__RECEIVER_SECRET_HEADER_CMD", "echo X-From-Command")
    assert settings.get("receiver_secret_header").value == "X-Carerix-Secret"


def test_airflow_cfg_is_read_after_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from airflow.configuration import conf

    monkeypatch.setattr(
        conf,
        "get",
        lambda section, key, **kw: (
            "X-From-Cfg" if (section, key) == ("carerix", "receiver_secret_header") else kw.get("fallback")
        ),
    )
    assert settings.get("receiver_secret_header") == settings.Value(
        "X-From-Cfg", "airflow.cfg [carerix] receiver_secret_header"
    )
    monkeypatch.setenv("AIRFLOW__CARERIX__RECEIVER_SECRET_HEADER", "X-Env")
    assert settings.get("receiver_secret_header").value == "X-Env"


def test_every_setting_is_an_option_of_the_provider_config_section() -> None:
    from airflow_provider_carerix.get_provider_info import get_provider_info

    options = get_provider_info()["config"]["carerix"]["options"]
    assert set(options) == {s.option for s in settings.SETTINGS}
    for setting in settings.SETTINGS:
        assert options[setting.option]["default"] == setting.default
        assert options[setting.option].get("sensitive", False) == setting.sensitive


def test_the_configuration_page_lists_every_setting() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    for setting in settings.SETTINGS:
        assert f"`{setting.option}`" in page and setting.env in page
        if setting.legacy_env:
            assert setting.legacy_env in page


# -- the store ---------------------------------------------------------------------------------------------


def test_store_order_connection_explicit_environment_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    default = resolve_store()
    assert default.url == f"sqlite:///{tmp_path / 'home' / 'carerix_events.db'}"
    assert default.source.startswith("the default")
    monkeypatch.setenv("AIRFLOW__CARERIX__EVENT_STORE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    assert resolve_store().source == "environment variable AIRFLOW__CARERIX__EVENT_STORE_URL"
    explicit = resolve_store(f"sqlite:///{tmp_path / 'explicit.db'}")
    assert (explicit.url, explicit.source) == (
        f"sqlite:///{tmp_path / 'explicit.db'}",
        "an explicit store URL",
    )
    # The connection comes first and agrees with the environment: it is the source named.
    same = resolve_store(connection=(f"sqlite:///{tmp_path / 'env.db'}", "carerix_event_store"))
    assert same.source == "the Airflow connection 'carerix_event_store'"


def test_a_connection_and_another_store_is_a_split_refused_with_both_sources(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CARERIX_EVENT_STORE_URL", "postgresql://carerix:env-password@db-a/carerix")
    with pytest.raises(ConfigurationError) as raised:
        resolve_store(
            connection=("postgresql+psycopg://carerix:conn-password@db-b/carerix", "carerix_event_store")
        )
    message = str(raised.value)
    assert "the Airflow connection 'carerix_event_store'" in message
    assert "environment variable CARERIX_EVENT_STORE_URL" in message
    assert "db-a" in message and "db-b" in message
    assert "password" not in message.replace("***", "")  # passwords hidden
    # The same database spelt differently is not a split.
    monkeypatch.setenv("CARERIX_EVENT_STORE_URL", "postgres://carerix@db-b:5432/carerix")
    assert resolve_store(connection=("postgresql+psycopg://carerix:pw@db-b/carerix", "c")).source == (
        "the Airflow connection 'c'"
    )
    monkeypatch.delenv("CARERIX_EVENT_STORE_URL")
    with pytest.raises(ConfigurationError, match="an explicit store URL"):
        resolve_store(f"sqlite:///{tmp_path / 'x.db'}", connection=(f"sqlite:///{tmp_path / 'y.db'}", "c"))


def test_same_store() -> None:
    assert same_store("sqlite:////a/b.db", "sqlite:////a/./b.db")
    assert not same_store("sqlite:////a/b.db", "sqlite:////a/c.db")
    assert same_store("postgresql://u:x@h/d", "postgresql+psycopg://u:y@h:5432/d")
    assert not same_store("postgresql://u@h/d", "postgresql://u@h/e")
    assert not same_store("postgresql://u@h/d", "sqlite:////d")


def test_the_hook_follows_the_connection_and_logs_where_the_store_came_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CARERIX_EVENT_STORE", sqlite_conn(tmp_path / "c.db", "pw-not-logged"))
    caplog.set_level(logging.INFO)
    location = locate_store()
    assert location.url == f"sqlite:///{tmp_path / 'c.db'}"
    assert "Carerix event store: sqlite:///" in caplog.text
    assert "(from the Airflow connection 'carerix_event_store')" in caplog.text
    assert "pw-not-logged" not in caplog.text
    # A second source that disagrees: refused, wherever it comes from.
    monkeypatch.setenv("AIRFLOW__CARERIX__EVENT_STORE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    with pytest.raises(ConfigurationError, match="two different event stores"):
        locate_store()


def test_another_connection_name_from_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIRFLOW__CARERIX__EVENT_STORE_CONN_ID", "shared_store")
    monkeypatch.setenv("AIRFLOW_CONN_SHARED_STORE", sqlite_conn(tmp_path / "shared.db"))
    assert CarerixEventStoreHook().get_store_url() == f"sqlite:///{tmp_path / 'shared.db'}"
    # Named explicitly but missing: an error, not the default store.
    with pytest.raises(ConfigurationError, match="'nope': no such Airflow connection"):
        CarerixEventStoreHook(store_conn_id="nope").get_store_url()


def test_the_default_store_is_never_in_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each container or process has its own working directory: a store there would be one per process."""
    monkeypatch.delenv("AIRFLOW_HOME")
    monkeypatch.chdir(tmp_path)
    assert not resolve_store().url.startswith(f"sqlite:///{tmp_path}")


# -- the metadata database for command-line tools ----------------------------------------------------------


def test_metadata_db_is_used_only_where_airflow_is_configured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    monkeypatch.delenv("_AIRFLOW_PROCESS_CONTEXT", raising=False)
    from airflow.configuration import conf

    missing = tmp_path / "airflow.db"
    monkeypatch.setattr(
        conf,
        "get",
        lambda *a, **k: (
            f"sqlite:///{missing}" if a[:2] == ("database", "sql_alchemy_conn") else k.get("fallback")
        ),
    )
    assert settings.use_airflow_metadata_db() is None  # nothing there: no empty airflow.db is made
    assert not missing.exists()
    assert "_AIRFLOW_PROCESS_CONTEXT" not in __import__("os").environ
    missing.write_bytes(b"")
    assert settings.use_airflow_metadata_db() == f"sqlite:///{missing}"
    assert __import__("os").environ["_AIRFLOW_PROCESS_CONTEXT"] == "server"


def test_a_task_never_reads_the_metadata_db_even_with_the_schedulers_context(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A LocalExecutor task inherits the scheduler's ``_AIRFLOW_PROCESS_CONTEXT=server`` but may not use the
    ORM ("Direct database access via the ORM is not allowed"): a missing store connection there is simply
    missing, as Airflow's supervisor answered."""
    from airflow.sdk.execution_time import task_runner

    from airflow_provider_carerix.hooks.event_store import _metastore_failure

    monkeypatch.setenv("_AIRFLOW_PROCESS_CONTEXT", "server")
    assert settings.reads_metadata_db()
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", object(), raising=False)
    assert not settings.reads_metadata_db()
    assert settings.use_airflow_metadata_db() is None
    assert _metastore_failure("carerix_event_store") is None
    monkeypatch.setenv("AIRFLOW__CARERIX__EVENT_STORE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    assert locate_store().url == f"sqlite:///{tmp_path / 'x.db'}"


def test_typed_settings_say_what_was_expected_and_where_it_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_carerix.receiver.config import receiver_settings
    from airflow_provider_carerix.receiver.server import ServerLimits
    from airflow_provider_carerix.receiver.validation import (
        DEFAULT_BODY_TIMEOUT,
        DEFAULT_MAX_BODY,
        DEFAULT_MIN_BODY_RATE,
    )

    defaults = receiver_settings()  # the settings' defaults are the receiver's own
    assert (defaults.max_body, defaults.body_timeout, defaults.min_body_rate, defaults.max_header_bytes) == (
        DEFAULT_MAX_BODY,
        DEFAULT_BODY_TIMEOUT,
        DEFAULT_MIN_BODY_RATE,
        ServerLimits.max_header_bytes,
    )
    assert defaults.allow_unsigned_applications is False
    monkeypatch.setenv("AIRFLOW__CARERIX__RECEIVER_ALLOW_UNSIGNED_APPLICATIONS", "True")
    monkeypatch.setenv("AIRFLOW__CARERIX__RECEIVER_BODY_TIMEOUT", "2.5")
    tuned = receiver_settings()
    assert tuned.allow_unsigned_applications is True and tuned.body_timeout == 2.5
    assert tuned.override(body_timeout=None, max_body=10).max_body == 10  # a command line's value wins
    monkeypatch.setenv("AIRFLOW__CARERIX__RECEIVER_MIN_BODY_RATE", "fast")
    with pytest.raises(ConfigurationError) as raised:
        receiver_settings()
    assert str(raised.value) == (
        "[carerix] receiver_min_body_rate: expected a whole number, got 'fast' "
        "(from environment variable AIRFLOW__CARERIX__RECEIVER_MIN_BODY_RATE)"
    )
    monkeypatch.setenv("AIRFLOW__CARERIX__RECEIVER_MIN_BODY_RATE", "-1")
    with pytest.raises(ConfigurationError, match="a whole number of at least 0, got '-1'"):
        receiver_settings()
    monkeypatch.delenv("AIRFLOW__CARERIX__RECEIVER_MIN_BODY_RATE")
    monkeypatch.setenv("AIRFLOW__CARERIX__RECEIVER_ALLOW_UNSIGNED_APPLICATIONS", "maybe")
    with pytest.raises(ConfigurationError, match="expected true or false, got 'maybe'"):
        receiver_settings()
