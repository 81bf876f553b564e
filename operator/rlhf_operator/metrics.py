"""Prometheus metrics of the operator: runs by phase, reconcile duration, errors, actions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed")


class Metrics:
    """The operator's metrics, in their own registry (several operators may share a process in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Gauge(
            "rlhf_operator_runs",
            "RLHFRuns known to the operator, by phase",
            ["phase"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "rlhf_operator_reconcile_duration_seconds",
            "Duration of one reconcile of a run",
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.errors = Counter(
            "rlhf_operator_reconcile_errors_total", "Reconciles that raised an error", registry=self.registry
        )
        self.actions = Counter(
            "rlhf_operator_actions_total",
            "Changes made to children",
            ["verb", "kind"],
            registry=self.registry,
        )
        self._phases: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {}
        for phase in PHASES:
            self.runs.labels(phase).set(0)

    @contextmanager
    def reconcile(self) -> Iterator[None]:
        """Time a reconcile; count it as an error if it raises."""
        start = time.perf_counter()
        try:
            yield
        except Exception:
            self.errors.inc()
            raise
        finally:
            self.reconcile_seconds.observe(time.perf_counter() - start)

    def set_phase(self, namespace: str, name: str, phase: str | None) -> None:
        """Record the run's phase (None: the run is gone)."""
        key = (namespace, name)
        old = self._phases.pop(key, None) if phase is None else self._phases.get(key)
        if phase is not None:
            self._phases[key] = phase
        if old == phase:
            return
        for p, delta in ((old, -1), (phase, 1)):  # O(1), not a count over every run
            if p in PHASES:  # a bounded set of label values
                self._counts[p] = self._counts.get(p, 0) + delta
                self.runs.labels(p).set(self._counts[p])

    @property
    def known_runs(self) -> int:
        """How many runs the operator reconciled and still exist."""
        return len(self._phases)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``address:port`` (a background thread)."""
        start_http_server(port, addr=address, registry=self.registry)

    def text(self) -> str:
        return generate_latest(self.registry).decode()
