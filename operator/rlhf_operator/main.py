"""Start the operator: Kopf in standalone mode, liveness endpoint, Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import kopf

from rlhf_operator.config import OperatorConfig
from rlhf_operator.controller import Controller
from rlhf_operator.handlers import build_registry
from rlhf_operator.kube import Connection, Kube
from rlhf_operator.metrics import Metrics


async def operator(
    config: OperatorConfig,
    connection: Connection,
    *,
    metrics: Metrics | None = None,
    liveness: str | None = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
    tune: Callable[[kopf.OperatorSettings], None] | None = None,
) -> None:
    """Run the operator in the current event loop until ``stop_flag`` is set."""
    controller = Controller(Kube(connection), config, metrics)
    registry = build_registry(controller, connection, tune)
    namespaces = list(config.namespaces)
    await kopf.operator(
        registry=registry,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def run_operator(
    config: OperatorConfig,
    *,
    liveness: str | None = "http://0.0.0.0:8080/healthz",
    metrics_port: int = 9090,
    metrics_address: str = "0.0.0.0",
    connection: Connection | None = None,
    stop_flag: threading.Event | None = None,
) -> None:
    """``rlhf-operator run``: the process's main loop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = Metrics()
    if metrics_port:
        metrics.serve(metrics_port, metrics_address)
    connection = connection or Connection.from_environment()
    asyncio.run(operator(config, connection, metrics=metrics, liveness=liveness, stop_flag=stop_flag))
