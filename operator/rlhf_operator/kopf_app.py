"""The operator for ``kopf run``: ``kopf run -m rlhf_operator.kopf_app --standalone -A``.

The same handlers as ``rlhf-operator run``, registered in Kopf's default registry when this
module is imported. Configuration from env ``RLHF_OPERATOR_CONFIG`` (or the chart's mount);
credentials from the service account or the current kubeconfig context. Prefer
``rlhf-operator run``, which also serves the Prometheus metrics.
"""

from __future__ import annotations

import kopf

from rlhf_operator.config import load_config
from rlhf_operator.controller import Controller
from rlhf_operator.handlers import build_registry
from rlhf_operator.kube import Connection, Kube

config = load_config()
connection = Connection.from_environment()
controller = Controller(Kube(connection), config)
build_registry(controller, connection, registry=kopf.get_default_registry())
