"""A real Kubernetes control plane on loopback, for the cluster tier.

etcd, kube-apiserver (RBAC, PodSecurity admission), kube-controller-manager (garbage collector, Job,
TTL-after-finished, service-account and PV binder controllers...), kube-scheduler, kwok (the
kubelet of fake nodes) and, optionally, the Kubeflow MPI operator: each the real binary, built by
:mod:`k8s_components`, started as a process of its own with a throwaway PKI in a temporary folder.
Nothing listens beyond 127.0.0.1.

kwok makes scheduled pods Running and Ready (and deletes pods being deleted) but never ends them:
:class:`PodScript` plays the containers' exit (code and termination message), as the test directs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import k8s_components as components
import yaml

ROOT = components.ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(
    check: Callable[[], Any],
    timeout: float = 60.0,
    interval: float = 0.2,
    what: str | Callable[[], str] = "condition",
) -> Any:
    """Poll ``check`` until it returns something truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except AssertionError as e:  # a check may assert; keep the last message
            last_error = e
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {text}"
                + (f": {last_error}" if last_error else "")
            )
        time.sleep(interval)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(folder: Path) -> None:
    """A CA, the API server's serving certificate, an admin client certificate (system:masters)
    and the service-account signing key pair; EC keys (fast to generate), valid for two days."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=rlhf-test-ca",
        cwd=folder,
    )

    def issue(name: str, subject: str, ext: str) -> None:
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=folder)
        (folder / f"{name}.ext").write_text(ext)
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=folder,
        )

    issue(
        "apiserver",
        "/CN=kube-apiserver",
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,IP:10.96.0.1\nextendedKeyUsage=serverAuth\n",
    )
    issue("admin", "/O=system:masters/CN=rlhf-test-admin", "extendedKeyUsage=clientAuth\n")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=folder)
    _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=folder)


def kubeconfig(
    server: str,
    ca: Path,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    user: dict[str, Any] = {}
    if cert and key:
        user = {"client-certificate": str(cert), "client-key": str(key)}
    if token:
        user = {"token": token}
    context: dict[str, Any] = {"cluster": "test", "user": "user"}
    if namespace:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "test", "context": context}],
    }


@dataclass
class Process:
    name: str
    proc: subprocess.Popen
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class Cluster:
    """A running control plane; use :func:`start_cluster`."""

    version: str
    folder: Path
    server: str
    admin_kubeconfig: Path
    processes: dict[str, Process] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    # ---- processes -----------------------------------------------------------------------------
    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Process:
        log = self.folder / f"{name}.log"
        handle = open(log, "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            cmd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=self.folder,
        )
        handle.close()
        process = Process(name, proc, log)
        self.processes[name] = process
        return process

    def check_alive(self) -> None:
        for p in self.processes.values():
            if p.proc.poll() is not None:
                raise AssertionError(f"{p.name} exited with {p.proc.returncode}:\n{p.tail()}")

    def stop(self) -> None:
        for p in reversed(list(self.processes.values())):
            p.stop()

    def logs(self, lines: int = 30) -> str:
        return "\n\n".join(f"--- {p.name} ---\n{p.tail(lines)}" for p in self.processes.values())

    # ---- API -----------------------------------------------------------------------------------
    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig_path: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        """The real kubectl (from tests/k8s_tools.py) against this cluster, as admin by default."""
        from k8s_tools import ensure_tools

        cmd = [str(ensure_tools().kubectl), f"--kubeconfig={kubeconfig_path or self.admin_kubeconfig}", *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"`kubectl {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def apply(
        self, docs: Any, *, server_side: bool = False, check: bool = True, kubeconfig_path: Path | None = None
    ) -> subprocess.CompletedProcess:
        text = (
            docs if isinstance(docs, str) else yaml.safe_dump_all(docs if isinstance(docs, list) else [docs])
        )
        args = ["apply", "-f", "-"] + (["--server-side"] if server_side else [])
        return self.kubectl(*args, input=text, check=check, kubeconfig_path=kubeconfig_path)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        proc = self.kubectl(*args, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise AssertionError(f"kubectl get {kind} {name}: {proc.stderr}")
        return json.loads(proc.stdout)

    def list(
        self, kind: str, namespace: str | None = None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"] + (["-n", namespace] if namespace else ["-A"])
        if selector:
            args += ["-l", selector]
        return json.loads(self.kubectl(*args).stdout).get("items") or []

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        """A raw API call as admin (for status patches kubectl cannot make)."""
        pki = self.folder / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.server + path,
            data=data,
            method=method,
            headers={"Content-Type": content_type, "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as rsp:
                code, payload = rsp.status, rsp.read()
        except urllib.error.HTTPError as e:
            code, payload = e.code, e.read()
        try:
            return code, json.loads(payload or b"null")
        except ValueError:  # /readyz and friends answer text
            return code, {"message": payload.decode(errors="replace")}

    def audit(self, user: str) -> list[dict[str, Any]]:
        """The audit events (Metadata level) of ``user``'s requests so far."""
        path = self.folder / "audit.log"
        out = []
        for line in path.read_text().splitlines() if path.exists() else []:
            event = json.loads(line)
            if (event.get("user") or {}).get("username") == user:
                out.append(event)
        return out

    def wait_established(self, crd: str, timeout: float = 60) -> None:
        def established() -> bool:
            conds = ((self.get("crd", crd) or {}).get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

        eventually(established, timeout=timeout, what=f"CRD {crd} to be established")

    def token(self, namespace: str, service_account: str, seconds: int = 7200) -> str:
        out = self.kubectl("create", "token", service_account, "-n", namespace, f"--duration={seconds}s")
        return out.stdout.strip()

    def write_kubeconfig(self, name: str, **kwargs: Any) -> Path:
        path = self.folder / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig(self.server, self.folder / "pki" / "ca.crt", **kwargs)))
        return path

    # ---- nodes ---------------------------------------------------------------------------------
    def add_node(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        capacity: dict[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
    ) -> None:
        """A fake node kwok keeps Ready: 64 CPUs, 512Gi and ``capacity`` on top."""
        resources = {
            "cpu": "64",
            "memory": "512Gi",
            "pods": "110",
            "ephemeral-storage": "1Ti",
            "hugepages-2Mi": "200Gi",
            **(capacity or {}),
        }
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    **(labels or {}),
                },
            },
            "spec": {"taints": taints or []},
            "status": {"allocatable": resources, "capacity": resources},
        }
        self.apply(node)


def _wait_ready(server: str, pki: Path, cluster: Cluster, timeout: float = 180) -> None:
    def ready() -> bool:
        cluster.check_alive()
        try:
            status, _ = cluster.request("GET", "/readyz")
        except OSError:  # not listening yet (urllib's URLError is an OSError)
            return False
        return status == 200

    eventually(ready, timeout=timeout, interval=0.5, what=lambda: f"kube-apiserver /readyz\n{cluster.logs()}")


def start_cluster(
    version: str | None = None, *, mpi_operator: bool = True, folder: Path | None = None
) -> Cluster:
    """Start the control plane of Kubernetes ``version`` (default the newest we test)."""
    version = version or components.KUBERNETES_VERSIONS[0]
    kube = components.kubernetes(version)
    kwok = components.kwok()
    etcd = components.etcd()
    mpi = components.mpi_operator() if mpi_operator else None
    # Keep the cluster's files (etcd's data, logs) in memory when /dev/shm is there.
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None
    folder = folder or Path(tempfile.mkdtemp(prefix="rlhf-k8s-", dir=base))
    pki = folder / "pki"
    make_pki(pki)
    # Every request of a ServiceAccount, at Metadata level: what the chart's RBAC is checked against.
    (folder / "audit-policy.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "audit.k8s.io/v1",
                "kind": "Policy",
                "omitStages": ["RequestReceived", "ResponseStarted"],
                "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]}, {"level": "None"}],
            }
        )
    )
    api_port, etcd_port, peer_port = free_port(), free_port(), free_port()
    server = f"https://127.0.0.1:{api_port}"
    cluster = Cluster(version, folder, server, folder / "admin.kubeconfig")
    cluster.admin_kubeconfig.write_text(
        yaml.safe_dump(kubeconfig(server, pki / "ca.crt", cert=pki / "admin.crt", key=pki / "admin.key"))
    )
    try:
        cluster.spawn(
            "etcd",
            [
                str(etcd),
                "--name=test",
                f"--data-dir={folder / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=test=http://127.0.0.1:{peer_port}",
                "--log-level=warn",
                "--unsafe-no-fsync",  # a throwaway cluster: durability buys nothing
            ],
            env={"GOMAXPROCS": "1"},
        )
        cluster.spawn(
            "kube-apiserver",
            [
                str(kube / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=RBAC",
                "--enable-admission-plugins=NodeRestriction,PodSecurity,OwnerReferencesPermissionEnforcement",
                "--allow-privileged=true",
                "--profiling=false",
                f"--audit-policy-file={folder / 'audit-policy.yaml'}",
                f"--audit-log-path={folder / 'audit.log'}",
                "--audit-log-mode=batch",
                "--audit-log-batch-max-wait=1s",
                "--endpoint-reconciler-type=none",
                "--v=1",
            ],
        )
        _wait_ready(server, pki, cluster)
        common = [
            f"--kubeconfig={cluster.admin_kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
        ]
        cluster.spawn(
            "kube-controller-manager",
            [
                str(kube / "kube-controller-manager"),
                *common,
                f"--secure-port={free_port()}",
                f"--authentication-kubeconfig={cluster.admin_kubeconfig}",
                f"--authorization-kubeconfig={cluster.admin_kubeconfig}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=false",
                "--concurrent-gc-syncs=5",
                "--v=1",
            ],
        )
        cluster.spawn(
            "kube-scheduler",
            [
                str(kube / "kube-scheduler"),
                *common,
                f"--secure-port={free_port()}",
                f"--authentication-kubeconfig={cluster.admin_kubeconfig}",
                f"--authorization-kubeconfig={cluster.admin_kubeconfig}",
                "--v=1",
            ],
        )
        (folder / "kwok.yaml").write_text(components.kwok_stages())
        cluster.spawn(
            "kwok",
            [
                str(kwok / "kwok"),
                f"--kubeconfig={cluster.admin_kubeconfig}",
                "--manage-all-nodes=true",
                f"--config={folder / 'kwok.yaml'}",
                f"--server-address=127.0.0.1:{free_port()}",
                "--cidr=10.244.0.0/16",
                "--node-ip=127.0.0.1",
                # Leases keep the nodes Ready: its heartbeat stage renews the node status only every
                # ~10 min, and without a --config'd KwokConfiguration the lease default (40 s) is unset.
                "--node-lease-duration-seconds=40",
            ],
        )
        if mpi is not None:
            cluster.apply(components.mpijob_crd().read_text(), server_side=True)
            cluster.wait_established("mpijobs.kubeflow.org")
            cluster.kubectl("create", "namespace", "mpi-operator")
            cluster.spawn(
                "mpi-operator",
                [
                    str(mpi / "mpi-operator"),
                    f"--kubeConfig={cluster.admin_kubeconfig}",
                    "--lock-namespace=mpi-operator",
                    "--kube-api-qps=50",
                    "--kube-api-burst=100",
                ],
            )
        eventually(
            lambda: cluster.get("serviceaccount", "default", "default"),
            timeout=60,
            what="the default ServiceAccount (kube-controller-manager)",
        )
        cluster.check_alive()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def running_cluster(version: str | None = None, **kwargs: Any) -> Iterator[Cluster]:
    cluster = start_cluster(version, **kwargs)
    try:
        yield cluster
    finally:
        cluster.stop()
        if os.environ.get("RLHF_KEEP_CLUSTER") != "1":
            shutil.rmtree(cluster.folder, ignore_errors=True)


# ---- the containers' exits ------------------------------------------------------------------------


@dataclass(frozen=True)
class Exit:
    """How a pod's containers end: exit code and termination message."""

    code: int = 0
    message: str = ""


class PodScript:
    """Ends Running pods as the test says, as a kubelet would report it.

    ``outcomes[(run, step)]`` is a list of :class:`Exit`, one per pod of that step in creation order
    (the launcher of each MPIJob attempt, or the prepare Job's pod); a pod beyond the list, or of a
    step without an entry, keeps running. The status patch sets the container's ``terminated``
    state (exit code, message) and the pod's phase, which the Job controller, the MPI operator and
    our operator then read.
    """

    def __init__(self, cluster: Cluster, namespace: str, interval: float = 0.2):
        self.cluster = cluster
        self.namespace = namespace
        self.interval = interval
        self.outcomes: dict[tuple[str, str], list[Exit]] = {}
        self.ended: dict[tuple[str, str], list[str]] = {}
        self._done: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.errors: list[str] = []

    def set(self, run: str, step: str, *exits: Exit) -> None:
        self.outcomes[(run, step)] = list(exits)

    def __enter__(self) -> PodScript:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as e:  # keep going; the test sees the error list
                self.errors.append(repr(e))
            self._stop.wait(self.interval)

    def _step_of(self, pod: dict[str, Any]) -> tuple[str, str] | None:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        run, step = labels.get("rlhf.dev/run"), labels.get("rlhf.dev/stage")
        role = labels.get("training.kubeflow.org/job-role")
        if not run or not step:
            return None
        if step != "prepare" and role != "launcher":
            return None  # workers run sshd until the MPI operator deletes them
        return run, step

    def _tick(self) -> None:
        pods = self.cluster.list("pods", self.namespace, "rlhf.dev/run")
        pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
        for pod in pods:
            meta, status = pod["metadata"], pod.get("status") or {}
            if meta["uid"] in self._done or meta.get("deletionTimestamp") or status.get("phase") != "Running":
                continue
            key = self._step_of(pod)
            if key is None:
                continue
            ended = self.ended.setdefault(key, [])
            script = self.outcomes.get(key, [])
            if len(ended) >= len(script):
                continue
            exit_ = script[len(ended)]
            self._end(pod, exit_)
            ended.append(meta["name"])
            self._done.add(meta["uid"])

    def _end(self, pod: dict[str, Any], exit_: Exit) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        statuses = []
        for c in pod["spec"]["containers"]:
            terminated: dict[str, Any] = {
                "exitCode": exit_.code,
                "reason": "Completed" if exit_.code == 0 else "Error",
                "startedAt": now,
                "finishedAt": now,
            }
            if exit_.message:
                terminated["message"] = exit_.message
            statuses.append(
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {"terminated": terminated},
                }
            )
        phase = "Succeeded" if exit_.code == 0 else "Failed"
        conditions = [
            {"type": t, "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}
            for t in ("Ready", "ContainersReady")
        ]
        body = {"status": {"phase": phase, "containerStatuses": statuses, "conditions": conditions}}
        meta = pod["metadata"]
        code, payload = self.cluster.request(
            "PATCH",
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
            body,
            content_type="application/strategic-merge-patch+json",
        )
        if code >= 300:
            raise AssertionError(f"cannot end pod {meta['name']}: {code} {payload}")
