"""The one module that talks to the Kubernetes API (async, aiohttp).

Only what the operator needs: get, list by label, create, merge-patch (object or status), delete.
``404 NotFound`` and ``409 AlreadyExists`` are normal outcomes of a level-based controller, not
errors: :meth:`Kube.get`/:meth:`Kube.patch` return None, :meth:`Kube.create` reports whether it
created, :meth:`Kube.delete` whether there was something to delete. Any other failure raises
:class:`ApiError`.

Credentials come from a :class:`Connection` (in-cluster service account or kubeconfig via the
``kubernetes`` package's loaders); Kopf logs in with the same one (:meth:`Connection.kopf_info`).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(frozen=True)
class Resource:
    """An API resource: group (``""`` for core), version, plural and kind."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace is not None:
            base += f"/namespaces/{urllib.parse.quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{urllib.parse.quote(name, safe='')}"
        if subresource:
            base += f"/{subresource}"
        return base


RUNS = Resource("rlhf.dev", "v1alpha1", "rlhfruns", "RLHFRun")
MPIJOBS = Resource("kubeflow.org", "v2beta1", "mpijobs", "MPIJob")
JOBS = Resource("batch", "v1", "jobs", "Job")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
PODS = Resource("", "v1", "pods", "Pod")
EVENTS = Resource("", "v1", "events", "Event")
NETWORKPOLICIES = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
BY_KIND = {r.kind: r for r in (RUNS, MPIJOBS, JOBS, CONFIGMAPS, PODS, EVENTS, NETWORKPOLICIES)}


def not_served(resource: Resource) -> str:
    """What a 404 on a whole resource means: its API (a CRD, usually) is not installed."""
    text = f"the API server does not serve {resource.plural}.{resource.group or 'core'}/{resource.version}"
    if resource.group == "kubeflow.org":
        text += ": install the Kubeflow MPI Operator (v0.5 or newer, MPIJob kubeflow.org/v2beta1)"
    return text


class ApiError(Exception):
    """A Kubernetes API call failed (other than the expected 404/409)."""

    def __init__(self, status: int, reason: str, message: str):
        self.status, self.reason, self.message = status, reason, message
        super().__init__(f"{status} {reason}: {message}")

    @property
    def permanent(self) -> bool:
        """The request itself is wrong (422 Invalid, 400 BadRequest): sending it again cannot help,
        unlike a quota, a webhook being down or a missing namespace or CRD, which may change."""
        return self.status in (400, 422)


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate. ``token`` may be a callable (refreshed
    service-account tokens)."""

    server: str
    token: str | Callable[[], str | None] | None = None
    ca_path: str | None = None
    insecure: bool = False
    cert_path: str | None = None
    key_path: str | None = None

    @classmethod
    def from_environment(cls) -> Connection:
        """In-cluster service account if there is one, else the current kubeconfig context."""
        from kubernetes import client, config

        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)

        def token() -> str | None:
            # auth_settings() refreshes in-cluster tokens; its key name differs across versions.
            for item in cfg.auth_settings().values():  # a TypedDict: its values are typed object
                if not isinstance(item, dict):
                    continue
                if item.get("in") == "header" and str(item.get("key", "")).lower() == "authorization":
                    return str(item.get("value") or "").removeprefix("Bearer ").strip() or None
            return None

        return cls(
            server=cfg.host,
            token=token,
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            cert_path=cfg.cert_file,
            key_path=cfg.key_file,
        )

    def current_token(self) -> str | None:
        return self.token() if callable(self.token) else self.token

    def kopf_info(self) -> Any:
        """The same credentials as Kopf's ``ConnectionInfo`` (for its login handler)."""
        import kopf

        return kopf.ConnectionInfo(
            server=self.server,
            ca_path=self.ca_path,
            insecure=self.insecure,
            token=self.current_token(),
            certificate_path=self.cert_path,
            private_key_path=self.key_path,
        )

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        if self.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(cafile=self.ca_path)
        if self.cert_path:
            ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx


class Kube:
    """An async client for the few calls the operator makes. Use as ``async with Kube(conn)``,
    or call :meth:`close`."""

    def __init__(self, connection: Connection, timeout: float = 30.0):
        self.connection = connection
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get_session(self) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is None or self._session.closed:
                connector = aiohttp.TCPConnector(ssl=self.connection.ssl_context())
                self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
            return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        session = await self._get_session()
        headers = {"Accept": "application/json"}
        token = self.connection.current_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        url = self.connection.server.rstrip("/") + path
        async with session.request(method, url, params=params, data=data, headers=headers) as rsp:
            text = await rsp.text()
            try:
                payload = json.loads(text) if text else None
            except ValueError:
                payload = {"message": text}
            if rsp.status >= 400 and rsp.status not in (404, 409):
                info = payload if isinstance(payload, dict) else {}
                raise ApiError(
                    rsp.status, str(info.get("reason") or rsp.reason), str(info.get("message") or text)[:1000]
                )
            return rsp.status, payload

    async def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        status, payload = await self._request("GET", resource.path(namespace, name))
        return None if status == 404 else payload

    async def list(
        self,
        resource: Resource,
        namespace: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        """Objects in ``namespace`` (None: all namespaces) matching the selectors."""
        params = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        status, payload = await self._request("GET", resource.path(namespace), params=params or None)
        if status == 404:
            raise ApiError(404, "NotFound", not_served(resource))
        return list((payload or {}).get("items") or [])

    async def create(
        self, resource: Resource, namespace: str, body: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, bool]:
        """Create ``body``; returns (object, True), or (None, False) when the name is taken."""
        status, payload = await self._request("POST", resource.path(namespace), body=body)
        if status == 409:
            return None, False
        if status == 404:
            details = (payload or {}).get("details") or {} if isinstance(payload, dict) else {}
            if details.get("kind") == "namespaces":
                raise ApiError(404, "NotFound", f"namespace {namespace} does not exist")
            raise ApiError(404, "NotFound", not_served(resource))
        return payload, True

    async def patch(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        subresource: str | None = None,
    ) -> dict[str, Any] | None:
        """JSON merge-patch the object (or its ``status`` subresource); None when it is gone."""
        status, payload = await self._request(
            "PATCH",
            resource.path(namespace, name, subresource),
            body=patch,
            content_type="application/merge-patch+json",
        )
        if status == 409:
            raise ApiError(409, "Conflict", str((payload or {}).get("message", "conflict")))
        return None if status == 404 else payload

    async def delete(
        self, resource: Resource, namespace: str, name: str, uid: str | None = None, foreground: bool = False
    ) -> bool:
        """Delete the object, its dependents in the background (or, ``foreground``, before the
        object itself goes); False when it was already gone. With ``uid``, only that incarnation
        of the name is deleted (precondition)."""
        policy = "Foreground" if foreground else "Background"
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": policy}
        if uid:
            body["preconditions"] = {"uid": uid}
        status, _ = await self._request("DELETE", resource.path(namespace, name), body=body)
        return status != 404
