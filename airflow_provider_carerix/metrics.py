"""The provider's metrics: every name in one list, sent through Airflow's own ``Stats``.

Airflow's ``[metrics]`` section decides where they go (StatsD, Datadog's DogStatsD or OpenTelemetry), with
Airflow's own prefix (``statsd_prefix`` / ``otel_prefix``, ``airflow`` by default), allow and block lists and
name handler: a deployment that watches Airflow's metrics sees these beside them, under ``carerix.``. The
standalone receiver (``carerix-receiver serve``) reads the same ``[metrics]`` section (:func:`describe` says
where they go at start-up).

**Tags.** A metric's tags are a closed set of words (a refusal's reason, an outcome, a cause) or names a
person chose in the deployment (a consumer's name, like Airflow's own ``dag_id``): never a payload value, an
event, entity or webhook id. Where the backend carries tags (OpenTelemetry attributes, DogStatsD with
``statsd_datadog_metrics_tags``, StatsD with ``statsd_influxdb_enabled``) they go as tags; plain StatsD has
none, so there the tag values are appended to the name in the order :data:`METRICS` lists them
(``carerix.receiver.refused.unauthenticated``), as Airflow's own per-DAG names do.

**Cost.** Decided once per process: with metrics off every call returns after one check, and nothing here
ever raises into the caller (a metrics backend that fails is logged once). The receiver's hot path sends
nothing per request on success: the group commit counts a whole group at once.

No Airflow import until the first metric is sent: the command-line tools import this module too.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "METRICS",
    "Metric",
    "describe",
    "gauge",
    "incr",
    "reset",
    "timing",
]

log = logging.getLogger(__name__)

PREFIX = "carerix."


@dataclass(frozen=True)
class Metric:
    """One metric as the docs list it (docs/monitoring.md has a row per entry of :data:`METRICS`)."""

    name: str
    kind: str  # counter | gauge | timer
    unit: str
    tags: tuple[str, ...]
    meaning: str
    emitted_by: str


def _m(name: str, kind: str, unit: str, tags: tuple[str, ...], meaning: str, emitted_by: str) -> Metric:
    assert name.startswith(PREFIX) and kind in ("counter", "gauge", "timer"), name
    return Metric(name, kind, unit, tags, meaning, emitted_by)


# -- the receiver -------------------------------------------------------------------------------------------
RECEIVER_STORED = _m(
    "carerix.receiver.stored",
    "counter",
    "events",
    (),
    "Deliveries committed to the store as new events (each one answered 201).",
    "receiver",
)
RECEIVER_DUPLICATES = _m(
    "carerix.receiver.duplicates",
    "counter",
    "events",
    (),
    "Deliveries of an event already stored (answered 200, nothing written): Carerix retried or recovery ran.",
    "receiver",
)
RECEIVER_REFUSED = _m(
    "carerix.receiver.refused",
    "counter",
    "requests",
    ("reason",),
    "Requests refused, by reason: unauthenticated (401), bad_request (400), invalid_event (422), too_large "
    "(413), head_too_large (431), media_type (415), body_timeout (408), store_refused (422: a replay of a "
    "purged event, or a value the store cannot hold), too_many_connections (503 from the standalone "
    "server, every connection busy).",
    "receiver",
)
RECEIVER_STORE_ERRORS = _m(
    "carerix.receiver.store_errors",
    "counter",
    "requests",
    ("cause",),
    "Deliveries answered 503 because the store could not commit them (Carerix retries), by cause: the "
    "store's causes (disk_full, read_only, locked, unreachable, timeout, ...), ack_timeout (no commit within "
    "the ack timeout) and unexpected (a bug; logged by type).",
    "receiver",
)
RECEIVER_COMMIT = _m(
    "carerix.receiver.commit",
    "timer",
    "ms",
    (),
    "Store latency: how long one group commit took (one transaction, one fsync, for every delivery waiting).",
    "receiver",
)
RECEIVER_GROUP_SIZE = _m(
    "carerix.receiver.group_size",
    "gauge",
    "deliveries",
    (),
    "Deliveries in the last group commit (1 when idle; grows with load).",
    "receiver",
)
# -- watchers (the triggers of CarerixEvents assets) -------------------------------------------------------
WATCHER_FIRED = _m(
    "carerix.watcher.fired",
    "counter",
    "events",
    ("consumer",),
    "Trigger events a watcher fired (one asset event each), by consumer.",
    "triggerer",
)
WATCHER_LAG = _m(
    "carerix.watcher.lag",
    "timer",
    "ms",
    ("consumer",),
    "From an event's receipt by the receiver to its watcher firing it (the oldest event of each batch).",
    "triggerer",
)
WATCHER_POLLS = _m(
    "carerix.watcher.polls",
    "counter",
    "queries",
    ("outcome",),
    "Queries of the shared poll loop, by outcome: ok, or unavailable (the store did not answer; retried "
    "with backoff, never an event).",
    "triggerer",
)
# -- claims (tasks taking their consumer's events) ---------------------------------------------------------
CLAIM_EVENTS = _m(
    "carerix.claim.events",
    "counter",
    "events",
    ("consumer",),
    "Events handed to a task by claim(), by consumer (handed out again after a failed try).",
    "task",
)
CLAIM_DURATION = _m(
    "carerix.claim.duration",
    "timer",
    "ms",
    ("consumer", "outcome"),
    "How long a claim held its consumer's lease, by outcome: processed (cursor moved), failed (the block "
    "raised; nothing recorded), lease_lost.",
    "task",
)
CLAIM_LEASE_WAIT = _m(
    "carerix.claim.lease_wait",
    "timer",
    "ms",
    ("consumer",),
    "How long a claim waited for its consumer's lease (another run was processing it).",
    "task",
)
CLAIM_BUSY = _m(
    "carerix.claim.busy",
    "counter",
    "claims",
    ("consumer",),
    "Claims that gave up waiting for the lease (ConsumerBusy after wait_timeout).",
    "task",
)
# -- recovery and sync -------------------------------------------------------------------------------------
RECOVERY_JOBS = _m(
    "carerix.recovery.jobs",
    "counter",
    "delivery jobs",
    ("outcome",),
    "Delivery-log jobs recovery read, by outcome: stored (the store lacked it), duplicate, skipped "
    "(delivered, with only_failed), invalid (the receiver would refuse the payload).",
    "task, carerix-webhooks recover",
)
SYNC_WEBHOOKS = _m(
    "carerix.sync.webhooks",
    "counter",
    "webhooks",
    ("action",),
    "Webhooks a sync (not a dry run) acted on, by action: create, replace, delete, enable (Carerix had "
    "disabled it), unchanged, keep.",
    "task, carerix-webhooks sync",
)
# -- the checks --------------------------------------------------------------------------------------------
FRESHNESS_AGE = _m(
    "carerix.freshness.age",
    "gauge",
    "seconds",
    ("consumer",),
    "Age of a consumer's oldest unprocessed event when a freshness check ran (0: nothing waiting).",
    "task",
)
FRESHNESS_STALE = _m(
    "carerix.freshness.stale",
    "counter",
    "checks",
    ("kind",),
    "Freshness checks that failed, by kind: backlog (an unprocessed event too old) or silence (no event of "
    "the watched types for too long).",
    "task",
)
WEBHOOK_UNHEALTHY = _m(
    "carerix.webhooks.unhealthy",
    "gauge",
    "webhooks",
    ("problem",),
    "Webhooks found unhealthy by the last health check, by problem: disabled, error, failure_rate.",
    "task",
)

#: Every metric the provider sends; docs/monitoring.md lists each (tests/test_metrics.py checks both ways).
METRICS: tuple[Metric, ...] = (
    RECEIVER_STORED,
    RECEIVER_DUPLICATES,
    RECEIVER_REFUSED,
    RECEIVER_STORE_ERRORS,
    RECEIVER_COMMIT,
    RECEIVER_GROUP_SIZE,
    WATCHER_FIRED,
    WATCHER_LAG,
    WATCHER_POLLS,
    CLAIM_EVENTS,
    CLAIM_DURATION,
    CLAIM_LEASE_WAIT,
    CLAIM_BUSY,
    RECOVERY_JOBS,
    SYNC_WEBHOOKS,
    FRESHNESS_AGE,
    FRESHNESS_STALE,
    WEBHOOK_UNHEALTHY,
)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _tag_value(value: object) -> str:
    """Only the characters every backend takes in a name (InfluxDB-style tags become part of the name)."""
    return _UNSAFE.sub("_", str(value))[:100] or "_"


def _name_part(value: str) -> str:
    """A tag value as one segment of a StatsD name: its dots become ``__``, as in Airflow's per-DAG names."""
    return value.replace(".", "__")


class _Emitter:
    """Where this process sends metrics, decided once (again after a fork)."""

    def __init__(self, stats: Any, tagged: bool, description: str) -> None:
        self.stats = stats
        self.on = stats is not None
        self.tagged = tagged
        self.description = description
        self.failed = False

    def name(self, metric: Metric, tags: Mapping[str, object]) -> tuple[str, dict[str, str] | None]:
        if not metric.tags:
            return metric.name, None
        values = {key: _tag_value(tags.get(key, "none")) for key in metric.tags}
        if self.tagged:
            return metric.name, values
        return metric.name + "." + ".".join(_name_part(values[key]) for key in metric.tags), None

    def send(self, method: str, metric: Metric, value: float, tags: Mapping[str, object]) -> None:
        try:
            name, tag_values = self.name(metric, tags)
            call = getattr(self.stats, method)
            if tag_values is None:
                call(name, value)
            else:
                call(name, value, tags=tag_values)
        except Exception as exc:
            if not self.failed:
                self.failed = True
                log.warning(
                    "Carerix metrics could not be sent (%s); going on without them", type(exc).__name__
                )


_emitter: _Emitter | None = None
_lock = threading.Lock()


def _resolve() -> _Emitter:
    global _emitter
    with _lock:
        if _emitter is None:
            _emitter = _configure()
        return _emitter


def _configure() -> _Emitter:
    try:
        from airflow.configuration import conf

        def on(option: str) -> bool:
            return bool(conf.getboolean("metrics", option, fallback=False))

        if on("statsd_datadog_enabled"):
            tagged = on("statsd_datadog_metrics_tags")
            where = f"DogStatsD {conf.get('metrics', 'statsd_host', fallback='localhost')}"
            client = ("datadog", "statsd_datadog_enabled", "apache-airflow[datadog]")
        elif on("statsd_on"):
            tagged = on("statsd_influxdb_enabled")
            where = (
                f"StatsD {conf.get('metrics', 'statsd_host', fallback='localhost')}:"
                f"{conf.get('metrics', 'statsd_port', fallback='8125')}"
            )
            client = ("statsd", "statsd_on", "apache-airflow[statsd]")
        elif on("otel_on"):
            tagged = True
            where = "OpenTelemetry"
            client = ("opentelemetry.sdk", "otel_on", "apache-airflow[otel]")
        else:
            return _Emitter(
                None, False, "off ([metrics] statsd_on, otel_on and statsd_datadog_enabled are off)"
            )
        module, option, extra = client
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            # Airflow would log an error and count into a no-op logger: say once, plainly, what to install.
            log.warning(
                "Carerix metrics are off: [metrics] %s is set but the %s package is not installed "
                "(pip install '%s')",
                option,
                module,
                extra,
            )
            return _Emitter(
                None, False, f"off ([metrics] {option} is set but {module} is not installed: {extra})"
            )
        from airflow_provider_carerix.version_compat import airflow_stats

        stats = airflow_stats()
    except Exception as exc:
        log.warning("Carerix metrics are off: Airflow's metrics could not be set up (%s)", type(exc).__name__)
        return _Emitter(None, False, f"off (setting up Airflow's metrics failed: {type(exc).__name__})")
    return _Emitter(stats, tagged, f"{where}, {'with tags' if tagged else 'tag values in the names'}")


def reset() -> None:
    """Decide again on the next metric (after a fork, or when a test changed ``[metrics]``)."""
    global _emitter
    _emitter = None


os.register_at_fork(after_in_child=reset)


def describe() -> str:
    """Where this process's metrics go, for start-up logs (sets the backend up if needed)."""
    return (_emitter or _resolve()).description


def incr(metric: Metric, count: int = 1, **tags: object) -> None:
    """Add ``count`` to a counter (nothing when ``count`` is 0 or metrics are off)."""
    emitter = _emitter or _resolve()
    if emitter.on and count:
        emitter.send("incr", metric, count, tags)


def gauge(metric: Metric, value: float, **tags: object) -> None:
    emitter = _emitter or _resolve()
    if emitter.on:
        emitter.send("gauge", metric, value, tags)


def timing(metric: Metric, milliseconds: float, **tags: object) -> None:
    """A duration in milliseconds (a float: every backend takes that, not all take a ``timedelta``)."""
    emitter = _emitter or _resolve()
    if emitter.on:
        emitter.send("timing", metric, float(milliseconds), tags)
