"""kmock's Kubernetes emulator, made realistic where the operator depends on API-server semantics.

kmock (``kmock.KubernetesEmulator``) serves discovery, keeps objects in memory and streams watch
events. This thin layer adds what a real API server does and the operator relies on:

* ``metadata.uid``, ``resourceVersion`` (one global counter), ``generation`` (bumped when
  anything but metadata/status changes), ``creationTimestamp``; ``generateName``;
* ``201 Created`` on create, ``409 AlreadyExists`` on a duplicate name, ``404 NotFound``;
* the ``status`` subresource: PATCH on the object ignores ``status``, PATCH on ``/status``
  changes only ``status``; a create drops ``status``;
* JSON merge patch (and JSON patch) semantics; a no-op patch changes nothing (no new version);
* list/watch with ``labelSelector``; watch from a ``resourceVersion`` replays what happened
  since (no replay of the world), ``timeoutSeconds`` ends the stream;
* delete with ``preconditions.uid``; finalizers delay deletion; deleting an owner deletes its
  dependents (ownerReference garbage collection, background propagation), and an object created
  with owners that no longer exist is collected right after its creation succeeds (a reconcile that
  raced the owner's deletion leaves no orphans, as with the real garbage collector).

Objects stay visible to assertions as ``emulator.objects[resource, namespace, name]``.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import datetime
import random
import re
import string
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import apps, rendering

Json = dict[str, Any]

#: (group/version/plural, kind, namespaced, has status subresource)
RESOURCES = [
    ("rlhf.dev/v1alpha1/rlhfruns", "RLHFRun", True, True),
    ("kubeflow.org/v2beta1/mpijobs", "MPIJob", True, True),
    ("batch/v1/jobs", "Job", True, True),
    ("v1/pods", "Pod", True, True),
    ("v1/configmaps", "ConfigMap", True, False),
    ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy", True, False),
    ("v1/events", "Event", True, False),
    ("v1/namespaces", "Namespace", False, True),  # discoverable, but not listable (see __call__)
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False, True),
]
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str, details: Json | None = None) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details or {})


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


_REQ = re.compile(r"^\s*([^\s!=,()]+)\s*(?:(==|=|!=)\s*([^\s,()]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def parse_selector(text: str | None) -> list[tuple[str, str, set[str]]]:
    """A label selector as (key, op, values) requirements; op in =, !=, in, notin, exists, !exists."""
    if not text:
        return []
    parts, depth, cur = [], 0, ""
    for ch in text:  # split on commas outside parentheses
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    reqs = []
    for part in parts:
        part = part.strip()
        if part.startswith("!"):
            reqs.append((part[1:].strip(), "!exists", set()))
            continue
        m = _REQ.match(part)
        if not m:
            raise _status(400, "BadRequest", f"invalid label selector {text!r}")
        key, op, value, setop, values = m.groups()
        if op:
            reqs.append((key, "!=" if op == "!=" else "=", {value}))
        elif setop:
            reqs.append((key, setop, {v.strip() for v in values.split(",") if v.strip()}))
        else:
            reqs.append((key, "exists", set()))
    return reqs


def matches(labels: dict[str, str], reqs: list[tuple[str, str, set[str]]]) -> bool:
    for key, op, values in reqs:
        present, value = key in labels, labels.get(key)
        ok = {
            "=": present and value in values,
            "!=": not present or value not in values,
            "in": present and value in values,
            "notin": not present or value not in values,
            "exists": present,
            "!exists": not present,
        }[op]
        if not ok:
            return False
    return True


@attrs.define(kw_only=True)
class RealisticKubernetes(kmock.KubernetesEmulator):
    """See the module docstring."""

    _rv: int = attrs.field(default=0, init=False)
    _changed: asyncio.Condition = attrs.field(factory=asyncio.Condition, init=False)
    _kinds: dict[Any, tuple[str, bool, bool]] = attrs.field(factory=dict, init=False)
    #: Per resource: the keys of its objects (first appearance order), and its part of the log
    #: (``rv``s ascending), so that a LIST or a watch touches only its own resource.
    _keys: dict[Any, dict[Any, None]] = attrs.field(factory=dict, init=False)
    _logs: dict[Any, list[tuple[int, Json]]] = attrs.field(factory=dict, init=False)
    _by_gvp: dict[tuple[Any, Any, Any], Any] = attrs.field(factory=dict, init=False)
    #: uid -> key of every live object (owner lookups for the garbage collector).
    _uids: dict[str, Any] = attrs.field(factory=dict, init=False)
    _background: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for path, kind, namespaced, status in RESOURCES:
            res = kmock.resource(path)
            self.resources[res] = kmock.ResourceInfo(
                kind=kind,
                singular=kind.lower(),
                namespaced=namespaced,
                verbs=VERBS,
                subresources={"status"} if status else set(),
            )
            self._kinds[res] = (kind, namespaced, status)
            self._keys[res], self._logs[res] = {}, []
            self._by_gvp[res.group, res.version, res.plural] = res

    # -- plumbing ------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # Namespaces are cluster-scoped: like a namespaced install's ServiceAccount (Roles only),
        # the operator may not list them (Kopf then assumes its configured namespaces exist).
        if raw_request.path.rstrip("/") == "/api/v1/namespaces":
            await raw_request.read()
            return aiohttp.web.json_response(
                {
                    "apiVersion": "v1",
                    "kind": "Status",
                    "status": "Failure",
                    "code": 403,
                    "reason": "Forbidden",
                    "message": 'namespaces is forbidden: cannot list resource "namespaces" '
                    "at the cluster scope",
                },
                status=403,
            )
        return await super().__call__(raw_request)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        # Skip kmock's own state tracking (KubernetesEmulator._handle); ours is in _serve_*.
        return await apps.RawHandler._handle(self, request)

    def _info(self, request: rendering.Request) -> tuple[Any, str, bool]:
        wanted = request.resource
        res = self._by_gvp.get(
            (
                getattr(wanted, "group", None),
                getattr(wanted, "version", None),
                getattr(wanted, "plural", None),
            )
        )
        if res is not None:
            kind, _, status = self._kinds[res]
            return res, kind, status
        for res, (kind, _, status) in self._kinds.items():
            if res == request.resource:
                return res, kind, status
        raise _status(404, "NotFound", f"the server could not find the requested resource {request.resource}")

    def _live(self, key: Any) -> Json | None:
        if key in self._objects and not self._objects[key].deleted:
            return copy.deepcopy(self._objects[key].raw)
        return None

    async def _record(self, res: Any, key: Any, type_: str, obj: Json) -> None:
        """Store a new version (or deletion) of ``key`` and publish the watch event."""
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
        uid = obj["metadata"].get("uid")
        if type_ == "DELETED":
            self._objects[key].delete()
            self._uids.pop(uid, None)
        elif key in self._objects:
            self._objects[key].create(obj)  # appends a version to the object's history
        else:
            self._objects[key] = obj
        if type_ != "DELETED" and uid:
            self._uids[uid] = key
        self._keys.setdefault(res, {})[key] = None
        event = {"type": type_, "object": obj}
        async with self._changed:
            self._logs.setdefault(res, []).append((self._rv, event))
            self._changed.notify_all()

    def _objects_of(
        self, res: Any, namespace: str | None, reqs: list[Any] | None = None, name: str | None = None
    ) -> list[Json]:
        """Copies of the live objects of ``res`` in ``namespace`` (None: all) that match ``reqs``
        (and ``name``), in the order they first appeared."""
        out = []
        for key in self._keys.get(res, {}):
            _, ns, _ = key
            if namespace is not None and ns != namespace or key not in self._objects:
                continue
            obj = self._objects[key]
            if not obj.deleted and (
                not reqs and name is None or self._visible(obj.raw, None, reqs or [], name)
            ):
                out.append(copy.deepcopy(obj.raw))
        return out

    @staticmethod
    def _visible(obj: Json, namespace: str | None, reqs: list[Any], name: str | None = None) -> bool:
        meta = obj.get("metadata") or {}
        if namespace is not None and meta.get("namespace") != namespace:
            return False
        if name is not None and meta.get("name") != name:
            return False
        return matches(meta.get("labels") or {}, reqs)

    # -- verbs ---------------------------------------------------------------------------------

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        res, kind, _ = self._info(request)
        obj = self._live((res, request.namespace, request.name))
        if obj is None:
            raise _status(
                404,
                "NotFound",
                f'{kind.lower()} "{request.name}" not found',
                {"name": request.name, "kind": kind},
            )
        return obj

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        res, kind, _ = self._info(request)
        reqs = parse_selector(request.params.get("labelSelector"))
        async with self._lock:
            items = self._objects_of(res, request.namespace, reqs)
            rv = self._rv
        return {
            "apiVersion": "v1",
            "kind": f"{kind}List",
            "metadata": {"resourceVersion": str(rv)},
            "items": items,
        }

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        res, kind, has_status = self._info(request)
        body = copy.deepcopy(request.data or {})
        meta = body.setdefault("metadata", {})
        namespace = request.namespace or meta.get("namespace")
        if meta.get("namespace") and request.namespace and meta["namespace"] != request.namespace:
            raise _status(400, "BadRequest", "the namespace of the object does not match the request")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _status(422, "Invalid", "name or generateName is required")
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = meta["generateName"] + suffix
        key = (res, namespace, meta["name"])
        async with self._lock:
            if self._live(key) is not None:
                raise _status(
                    409,
                    "AlreadyExists",
                    f'{kind.lower()} "{meta["name"]}" already exists',
                    {"name": meta["name"], "kind": kind},
                )
            meta.update(
                namespace=namespace, uid=str(uuid.uuid4()), generation=1, creationTimestamp=now_rfc3339()
            )
            if has_status:
                body.pop("status", None)
            await self._record(res, key, "ADDED", body)
            created = self._live(key)
            owners = [ref.get("uid") for ref in meta.get("ownerReferences") or []]
            if owners and not any(uid in self._uids for uid in owners):
                task = asyncio.get_running_loop().create_task(
                    self._collect_orphan(res, key, created["metadata"]["uid"])
                )
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        return rendering.Response(status=201, payload=created)

    async def _collect_orphan(self, res: Any, key: Any, uid: str) -> None:
        """The garbage collector's view of a dependent whose owners are all gone: delete it."""
        async with self._lock:
            obj = self._live(key)
            if obj is not None and obj["metadata"]["uid"] == uid:
                await self._remove(res, key, obj)

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        res, kind, has_status = self._info(request)
        key = (res, request.namespace, request.name)
        async with self._lock:
            old = self._live(key)
            if old is None:
                raise _status(404, "NotFound", f'{kind.lower()} "{request.name}" not found')
            ctype = request.headers.get("Content-Type", "")
            if "json-patch" in ctype:
                new = jsonpatch.apply_patch(old, request.data)
            else:
                new = merge(old, request.data or {})
            for field in ("uid", "creationTimestamp", "resourceVersion", "generation", "name", "namespace"):
                if field in old["metadata"]:
                    new.setdefault("metadata", {})[field] = old["metadata"][field]
            if request.subresource == "status":
                new = {**old, "status": new.get("status")}
                if new["status"] is None:
                    new.pop("status")
            elif has_status:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = old["status"]
            if new != old:
                strip = ("metadata", "status") if has_status else ("metadata",)
                if {k: v for k, v in new.items() if k not in strip} != {
                    k: v for k, v in old.items() if k not in strip
                }:
                    new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
                meta = new["metadata"]
                if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                    await self._remove(res, key, new)
                    return new
                await self._record(res, key, "MODIFIED", new)
            return self._live(key)

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        res, kind, _ = self._info(request)
        key = (res, request.namespace, request.name)
        options = request.data if isinstance(request.data, dict) else {}
        async with self._lock:
            old = self._live(key)
            if old is None:
                raise _status(404, "NotFound", f'{kind.lower()} "{request.name}" not found')
            uid = (options.get("preconditions") or {}).get("uid")
            if uid and uid != old["metadata"]["uid"]:
                raise _status(409, "Conflict", f"precondition failed: uid {uid} does not match")
            if old["metadata"].get("finalizers"):
                if not old["metadata"].get("deletionTimestamp"):
                    old["metadata"]["deletionTimestamp"] = now_rfc3339()
                    await self._record(res, key, "MODIFIED", old)
                return self._live(key)
            await self._remove(res, key, old)
        return old

    async def _remove(self, res: Any, key: Any, obj: Json) -> None:
        """Delete ``key`` for real, then its dependents (the garbage collector's job)."""
        await self._record(res, key, "DELETED", obj)
        uid = obj["metadata"]["uid"]
        for (r, ns, name), other in list(self._objects.items()):
            if other.deleted:
                continue
            refs = (other.raw.get("metadata") or {}).get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in refs):
                dependent = copy.deepcopy(other.raw)
                if dependent["metadata"].get("finalizers"):
                    dependent["metadata"].setdefault("deletionTimestamp", now_rfc3339())
                    await self._record(r, (r, ns, name), "MODIFIED", dependent)
                else:
                    await self._remove(r, (r, ns, name), dependent)

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        res, _, _ = self._info(request)
        params = request.params
        reqs = parse_selector(params.get("labelSelector"))
        name = None
        field = params.get("fieldSelector") or ""
        if field.startswith("metadata.name="):
            name = field.split("=", 1)[1]
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        since = params.get("resourceVersion") or "0"
        yield b""  # start streaming at once
        async with self._lock:
            if since == "0":
                initial = [
                    {"type": "ADDED", "object": o}
                    for o in self._objects_of(res, request.namespace, reqs, name)
                ]
                cursor = self._rv
            else:
                initial, cursor = [], int(since)
        for event in initial:
            yield event
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        while True:
            async with self._changed:
                log = self._logs.get(res, [])
                pending = log[bisect.bisect_right(log, cursor, key=lambda entry: entry[0]) :]
                if not pending:
                    remaining = None if deadline is None else deadline - loop.time()
                    if remaining is not None and remaining <= 0:
                        return
                    try:
                        await asyncio.wait_for(self._changed.wait(), remaining)
                    except TimeoutError:
                        return
                    continue
            for rv, event in pending:
                cursor = rv
                if self._visible(event["object"], request.namespace, reqs, name):
                    yield event
