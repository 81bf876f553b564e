"""The realism layer over kmock behaves like an API server where the operator relies on it."""

from __future__ import annotations

import asyncio
import json

import kmock
import pytest
from kube_emulator import RealisticKubernetes, matches, parse_selector

RUNS = "/apis/rlhf.dev/v1alpha1/namespaces/ns/rlhfruns"
CMS = "/api/v1/namespaces/ns/configmaps"


@pytest.mark.asyncio
async def test_create_get_patch_status_and_conflicts():
    async with RealisticKubernetes() as emu, kmock.Server(emu) as srv:
        http = srv.client
        rsp = await http.post(RUNS, json={"metadata": {"name": "r"}, "spec": {"a": 1}, "status": {"x": 1}})
        assert rsp.status == 201
        run = await rsp.json()
        assert run["metadata"]["generation"] == 1 and run["metadata"]["uid"] and "status" not in run
        assert (await http.post(RUNS, json={"metadata": {"name": "r"}})).status == 409
        merge = {"Content-Type": "application/merge-patch+json"}
        rsp = await http.patch(
            f"{RUNS}/r", data=json.dumps({"spec": {"a": 2}, "status": {"x": 2}}), headers=merge
        )
        run2 = await rsp.json()
        assert run2["spec"] == {"a": 2} and "status" not in run2 and run2["metadata"]["generation"] == 2
        rsp = await http.patch(
            f"{RUNS}/r/status", data=json.dumps({"status": {"x": 3}, "spec": {"a": 9}}), headers=merge
        )
        run3 = await rsp.json()
        assert run3["status"] == {"x": 3} and run3["spec"] == {"a": 2} and run3["metadata"]["generation"] == 2
        rv = run3["metadata"]["resourceVersion"]
        rsp = await http.patch(f"{RUNS}/r/status", data=json.dumps({"status": {"x": 3}}), headers=merge)
        assert (await rsp.json())["metadata"]["resourceVersion"] == rv  # no-op: no new version
        assert (await http.get(f"{RUNS}/nope")).status == 404


@pytest.mark.asyncio
async def test_watch_from_a_resource_version_and_label_selectors():
    async with RealisticKubernetes() as emu, kmock.Server(emu) as srv:
        http = srv.client
        await http.post(CMS, json={"metadata": {"name": "a", "labels": {"app": "x"}}})
        listing = await (await http.get(CMS, params={"labelSelector": "app=x"})).json()
        assert [o["metadata"]["name"] for o in listing["items"]] == ["a"]
        rv = listing["metadata"]["resourceVersion"]
        await http.post(CMS, json={"metadata": {"name": "b", "labels": {"app": "y"}}})
        await http.post(CMS, json={"metadata": {"name": "c", "labels": {"app": "x"}}})
        params = {
            "watch": "true",
            "resourceVersion": rv,
            "labelSelector": "app in (x)",
            "timeoutSeconds": "1",
        }
        async with http.get(CMS, params=params) as rsp:
            lines = [json.loads(line) for line in (await rsp.text()).splitlines() if line.strip()]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [("ADDED", "c")]


@pytest.mark.asyncio
async def test_deleting_an_owner_deletes_its_dependents_and_preconditions_hold():
    async with RealisticKubernetes() as emu, kmock.Server(emu) as srv:
        http = srv.client
        run = await (await http.post(RUNS, json={"metadata": {"name": "r"}})).json()
        ref = {
            "apiVersion": "rlhf.dev/v1alpha1",
            "kind": "RLHFRun",
            "name": "r",
            "uid": run["metadata"]["uid"],
            "controller": True,
        }
        await http.post(CMS, json={"metadata": {"name": "child", "ownerReferences": [ref]}})
        await http.post(CMS, json={"metadata": {"name": "other"}})
        wrong = await http.delete(f"{RUNS}/r", json={"preconditions": {"uid": "nope"}})
        assert wrong.status == 409
        assert (await http.delete(f"{RUNS}/r")).status == 200
        names = [o["metadata"]["name"] for o in (await (await http.get(CMS)).json())["items"]]
        assert names == ["other"]
        assert (await http.delete(f"{RUNS}/r")).status == 404
        # A dependent created after its owner is gone (a reconcile racing the deletion) is accepted,
        # then collected, as the real garbage collector does.
        late = await http.post(CMS, json={"metadata": {"name": "late", "ownerReferences": [ref]}})
        assert late.status == 201
        for _ in range(100):
            names = [o["metadata"]["name"] for o in (await (await http.get(CMS)).json())["items"]]
            if names == ["other"]:
                break
            await asyncio.sleep(0.01)
        assert names == ["other"]


def test_label_selector_parsing():
    reqs = parse_selector("a=1,b!=2,c in (x, y),!d,e")
    assert matches({"a": "1", "c": "y", "e": ""}, reqs)
    assert not matches({"a": "1", "c": "z", "e": ""}, reqs)
    assert not matches({"a": "1", "c": "x", "d": "", "e": ""}, reqs)
