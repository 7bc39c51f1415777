"""Prometheus metrics of one server (``GET /metrics``), on a registry of its own.

Each app gets its own ``CollectorRegistry`` (tests run several servers in one process). The
ingest counters are the writer's plain attributes, read at scrape time by a custom collector, so
the hot path pays nothing for them; only the rejection counter and the latency histogram are
updated as things happen.

    flagpost_checkins_total                      check-ins committed and acknowledged
    flagpost_events_stored_total                 events inserted into update_events
    flagpost_events_duplicate_total              events ignored as already stored
    flagpost_ingest_batches_total                group-commit transactions committed
    flagpost_ingest_failed_batches_total         transactions that failed (nothing stored)
    flagpost_run_updates_applied_total           run updates applied
    flagpost_run_updates_ignored_total           duplicates, older snapshots, refused transitions
    flagpost_log_lines_stored_total              run log lines inserted
    flagpost_log_lines_dropped_total             lines of another agent's run / failing rows
    flagpost_actions_delivered_total             actions handed to agents (re-deliveries count)
    flagpost_checkins_rejected_total{reason}     invalid_argument | unauthenticated |
                                                 permission_denied | overloaded | unavailable |
                                                 internal
    flagpost_ingest_queue_events                 events waiting for (or in) a commit
    flagpost_ingest_latency_seconds              histogram: submit -> commit, per check-in
    flagpost_database_up                         1 when the database is reachable and writable
    flagpost_database_fault{cause}               1 for the cause it is not (disk full | read-only |
                                                 locked | unreachable | timeout | other)
    flagpost_web_connections_open                web connections open (server.web.listener)
    flagpost_web_connections_refused_total{reason}  over_capacity | out_of_descriptors
    flagpost_web_connections_timed_out_total{phase} header | body
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.services.health import DatabaseHealth
from server.services.ingest import IngestWriter
from server.storage.faults import DbFault

REJECTION_REASONS = (
    "invalid_argument",
    "unauthenticated",
    "permission_denied",
    "overloaded",
    "unavailable",
    "internal",
)
CHECKIN_METHOD = "/flagpost.v1.AgentService/CheckIn"
WEB_REFUSAL_REASONS = ("over_capacity", "out_of_descriptors")
WEB_TIMEOUT_PHASES = ("header", "body")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _IngestCollector(Collector):
    def __init__(
        self,
        writer: Callable[[], IngestWriter | None],
        health: Callable[[], DatabaseHealth | None],
    ) -> None:
        self._writer = writer
        self._health = health

    def collect(self) -> Iterator[Metric]:
        writer = self._writer()
        counters = [
            ("flagpost_checkins", "Check-ins committed and acknowledged.", "checkins"),
            ("flagpost_events_stored", "Events inserted into update_events.", "events_stored"),
            ("flagpost_events_duplicate", "Events ignored as already stored.", "duplicates"),
            ("flagpost_ingest_batches", "Group-commit transactions committed.", "batches"),
            (
                "flagpost_ingest_failed_batches",
                "Group-commit transactions that failed (nothing stored).",
                "failed_batches",
            ),
            ("flagpost_run_updates_applied", "Run updates applied.", "run_updates_applied"),
            (
                "flagpost_run_updates_ignored",
                "Run updates ignored (duplicate, older snapshot, refused transition, other "
                "agent's run).",
                "run_updates_ignored",
            ),
            ("flagpost_log_lines_stored", "Run log lines inserted.", "log_lines_stored"),
            (
                "flagpost_log_lines_dropped",
                "Run log lines dropped (another agent's run, or a row that failed alone).",
                "log_lines_dropped",
            ),
            ("flagpost_actions_delivered", "Actions handed to agents.", "actions_delivered"),
        ]
        for name, doc, attribute in counters:
            value = getattr(writer, attribute) if writer is not None else 0
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "flagpost_ingest_queue_events",
            "Events waiting for the ingest writer or being committed.",
            value=writer.queued_events if writer is not None else 0,
        )
        health = self._health()
        yield GaugeMetricFamily(
            "flagpost_database_up",
            "1 when the database is reachable and writable, 0 while it is not.",
            value=1 if health is None or health.available else 0,
        )
        faults = GaugeMetricFamily(
            "flagpost_database_fault",
            "1 for the cause the database is unavailable for (disk full, read-only, ...), else 0.",
            labels=["cause"],
        )
        current = health.fault if health is not None and not health.available else None
        for fault in DbFault:
            faults.add_metric([str(fault)], 1 if fault is current else 0)
        yield faults


class ServerMetrics:
    """The metrics of one server process (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.rejections = Counter(
            "flagpost_checkins_rejected",
            "Check-ins refused, by reason.",
            ["reason"],
            registry=self.registry,
        )
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        self.ingest_latency = Histogram(
            "flagpost_ingest_latency_seconds",
            "Time from a check-in's submission to its commit.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.web_open = Gauge(
            "flagpost_web_connections_open", "Web connections open.", registry=self.registry
        )
        self.web_refused = Counter(
            "flagpost_web_connections_refused",
            "Web connections closed at once, unread, by reason.",
            ["reason"],
            registry=self.registry,
        )
        for reason in WEB_REFUSAL_REASONS:
            self.web_refused.labels(reason)
        self.web_timed_out = Counter(
            "flagpost_web_connections_timed_out",
            "Web connections closed because a request head or body was too slow to arrive.",
            ["phase"],
            registry=self.registry,
        )
        for phase in WEB_TIMEOUT_PHASES:
            self.web_timed_out.labels(phase)
        self.writer: IngestWriter | None = None
        self.health: DatabaseHealth | None = None
        self.registry.register(_IngestCollector(lambda: self.writer, lambda: self.health))

    def record_rpc_error(self, method: str, reason: str) -> None:
        """Count a refused check-in (the gRPC interceptor calls this for every error)."""
        if method == CHECKIN_METHOD:
            self.rejections.labels(reason if reason in REJECTION_REASONS else "internal").inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus text format (served as :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


CONTENT_TYPE = CONTENT_TYPE_LATEST
