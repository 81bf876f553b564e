"""Our CRD and manifests against a real kube-apiserver: what it accepts and refuses, and that
`rlhf validate` agrees with it."""

from __future__ import annotations

import copy
import json

import pytest
import test_crd
import yaml
from conftest import NS, ROOT
from k8s_cluster import Cluster

from rlhf.api import read_manifest

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def crd_installed(k8s: Cluster) -> Cluster:
    # Plain client-side apply, as the README's first step does: the API server validates every
    # default of the schema (CEL rules included) and refused the CRD when a default was {}.
    k8s.kubectl("apply", "-f", str(ROOT / "crds" / "rlhfrun.yaml"))
    k8s.wait_established("rlhfruns.rlhf.dev")
    return k8s


def server_dry_run(cluster: Cluster, manifest: dict) -> tuple[bool, str]:
    doc = copy.deepcopy(manifest)
    doc.setdefault("metadata", {})["namespace"] = NS
    proc = cluster.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(doc), check=False
    )
    return proc.returncode == 0, proc.stderr + proc.stdout


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_is_accepted_and_defaulted_as_the_typed_spec_says(crd_installed: Cluster, path):
    manifest = read_manifest(path)
    ok, out = server_dry_run(crd_installed, manifest)
    assert ok, out
    stored = json.loads(out)
    # The API server's defaults are the typed spec's: the stored spec equals rlhf's own dump.
    from rlhf.api import load_manifest

    typed = load_manifest(manifest, semantic=False).to_manifest()["spec"]
    assert flat(stored["spec"]) == flat(typed)


def flat(value, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists by index; empty containers dropped: the API
    server leaves out an empty list the typed spec writes), so a difference shows as the keys
    that differ."""
    out: dict[str, object] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(flat(v, f"{prefix}[{i}]"))
    elif ".resources." in prefix:  # int-or-string quantities: 64 and "64" are the same
        out[prefix] = str(value)
    else:
        out[prefix] = value
    return out


def test_examples_are_created_for_real(crd_installed: Cluster):
    for path in EXAMPLES:
        manifest = read_manifest(path)
        manifest["metadata"] = {"name": manifest["metadata"]["name"], "namespace": "examples"}
        crd_installed.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "examples"}})
        crd_installed.apply(manifest)
    names = {r["metadata"]["name"] for r in crd_installed.list("rlhfruns", "examples")}
    assert names == {read_manifest(p)["metadata"]["name"] for p in EXAMPLES}
    crd_installed.kubectl("delete", "namespace", "examples", "--wait=false")


@pytest.mark.parametrize(
    "mutate, field, words, enforced", [i[1:] for i in test_crd.INVALID], ids=[i[0] for i in test_crd.INVALID]
)
def test_the_api_server_refuses_what_validate_refuses(crd_installed: Cluster, mutate, field, words, enforced):
    """Every invalid manifest of the CRD unit tests: refused by the real API server exactly when
    the table says the schema or a CEL rule enforces it (the rest is admission's: the operator
    marks the run invalid), and `rlhf validate` refuses all of them."""
    manifest = read_manifest(ROOT / "examples" / "quickstart.yaml")
    mutate(manifest)
    ok, out = server_dry_run(crd_installed, manifest)
    if enforced is None:
        assert ok, f"the API server should accept this (admission refuses it): {out}"
    else:
        assert not ok, f"the API server accepted an invalid manifest ({field}: {words})"
        last = field.split(".")[-1].split(":")[0]
        assert last in out or field.split(":")[0] in out, out


def test_storage_is_immutable(crd_installed: Cluster):
    manifest = read_manifest(ROOT / "examples" / "quickstart.yaml")
    manifest["metadata"] = {"name": "immutable", "namespace": NS}
    crd_installed.apply(manifest)
    manifest["spec"]["storage"] = {"localDir": "elsewhere"}
    proc = crd_installed.apply(manifest, check=False)
    assert proc.returncode != 0 and "storage is immutable" in proc.stderr, proc.stderr
    crd_installed.kubectl("delete", "rlhfrun", "immutable", "-n", NS)


def test_a_run_name_that_starts_with_a_digit_is_refused(crd_installed: Cluster):
    manifest = read_manifest(ROOT / "examples" / "quickstart.yaml")
    manifest["metadata"] = {"name": "1st-run"}
    ok, out = server_dry_run(crd_installed, manifest)
    assert not ok and "metadata.name" in out, out


def test_the_crd_matches_its_generator(crd_installed: Cluster):
    """What the API server stores is the generated CRD (no field was pruned or rewritten)."""
    stored = crd_installed.get("crd", "rlhfruns.rlhf.dev")
    ours = yaml.safe_load((ROOT / "crds" / "rlhfrun.yaml").read_text())
    assert flat(stored["spec"]["versions"][0]["schema"]) == flat(ours["spec"]["versions"][0]["schema"])
