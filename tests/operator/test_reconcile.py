"""The pure decision: idempotence, no flapping conditions, status as memory, suspension etiquette."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from harness import manifest, operator_config
from rlhf_operator import names, render
from rlhf_operator.admission import AdmissionError, admit
from rlhf_operator.observe import (
    Blocked,
    diagnose,
    diagnostics_needed,
    merge_patch,
    metrics_of,
    mpijob_state,
    pods_needed,
    termination_message,
)
from rlhf_operator.reconcile import Refusal, decide

from rlhf.api.outcome import StageFailure, StageSummary

CONFIG = operator_config()
UID = "run-uid"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def body(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    data = manifest(**spec)
    data["metadata"].update(uid=UID, generation=1)
    if status is not None:
        data["status"] = status
    return data


def observed(data: dict[str, Any], steps: dict[str, list[str]], **extra: Any) -> dict:
    """Children as the operator renders them, with the given conditions per step."""
    admitted = admit(data, CONFIG)
    objects = {}
    for step in names.steps(names.stages_of(data)):
        cm = render.config_map(admitted, step, UID)
        objects[("ConfigMap", cm["metadata"]["name"])] = cm
    for stage in names.stages_of(data):
        policy = render.network_policy(admitted, stage, UID)
        objects[("NetworkPolicy", policy["metadata"]["name"])] = policy
    for step, conds in steps.items():
        if step == names.PREPARE:
            obj = render.prepare_job(admitted, CONFIG, UID)
            kind = "Job"
        else:
            obj = render.mpijob(admitted, CONFIG, step, UID, attempt=extra.get("attempt", {}).get(step, 1))
            kind = "MPIJob"
        obj["metadata"]["uid"] = f"{step}-uid"
        obj["status"] = {"conditions": [{"type": t, "status": "True"} for t in conds]}
        objects[(kind, obj["metadata"]["name"])] = obj
    return objects


def step(data, objects, pods=None, now=T0, failures=None, blocked=None):
    """Decide, and apply the status as the API server would; returns (decision, new body)."""
    admission = _admission(data)
    decision = decide(data, admission, CONFIG, objects, pods or {}, now, failures, blocked)
    new = copy.deepcopy(data)
    new["status"] = decision.status
    return decision, new


def _admission(data):
    try:
        return admit(data, CONFIG)
    except AdmissionError as e:
        return e


def launcher(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": {
            "containerStatuses": [
                {"name": "launcher", "state": {"terminated": {"exitCode": 0, "message": json.dumps(message)}}}
            ]
        }
    }


def test_a_new_run_creates_config_maps_and_the_prepare_job_only():
    decision, _ = step(body(), {})
    created = [(a.kind, a.name) for a in decision.actions]
    assert created == [
        ("ConfigMap", "demo-run"),
        ("ConfigMap", "demo-sft-trainer"),
        ("ConfigMap", "demo-reward-trainer"),
        ("ConfigMap", "demo-ppo-trainer"),
        ("NetworkPolicy", "demo-sft"),
        ("NetworkPolicy", "demo-reward"),
        ("NetworkPolicy", "demo-ppo"),
        ("Job", "demo-prepare"),
    ]
    assert decision.status["phase"] == "Running"


def test_deciding_again_on_the_same_world_changes_nothing():
    data = body()
    objects = observed(data, {"prepare": ["Complete"], "sft": ["Created", "Running"], "reward": ["Created"]})
    first, data = step(data, objects, now=T0)
    second, _ = step(data, objects, now=T0 + timedelta(minutes=10))  # within the run's TTL of finished jobs
    assert second.actions == [] and second.events == []
    assert second.status == first.status  # transition times kept: nothing to write
    assert merge_patch(first.status, second.status) == {}


def test_transition_time_changes_only_with_status():
    data = body()
    objects = observed(data, {"prepare": ["Complete"], "sft": ["Created"], "reward": ["Created"]})
    _, data = step(data, objects, now=T0)
    objects = observed(data, {"prepare": ["Complete"], "sft": ["Created", "Running"], "reward": ["Created"]})
    _, later = step(data, objects, now=T0 + timedelta(minutes=5))
    before = {c["type"]: c for c in data["status"]["conditions"]}
    after = {c["type"]: c for c in later["status"]["conditions"]}
    assert after["SFTSucceeded"]["reason"] == "Running" != before["SFTSucceeded"]["reason"]
    assert (
        after["SFTSucceeded"]["lastTransitionTime"] == before["SFTSucceeded"]["lastTransitionTime"]
    )  # still False


def test_a_failed_attempt_is_counted_once_even_if_seen_twice():
    data = body()
    objects = observed(data, {"prepare": ["Complete"], "sft": ["Created", "Failed"], "reward": ["Created"]})
    first, data = step(data, objects)
    assert [(a.verb, a.name, a.uid) for a in first.actions] == [("delete", "demo-sft", "sft-uid")]
    second, data = step(data, objects)  # the deletion has not happened yet (or the operator restarted)
    sft = next(s for s in data["status"]["stages"] if s["name"] == "sft")
    assert sft["retries"] == 1
    del objects[("MPIJob", "demo-sft")]
    third, _ = step(data, objects)
    created = [a for a in third.actions if a.verb == "create"]
    assert [a.name for a in created] == ["demo-sft"]
    assert created[0].body["metadata"]["annotations"][names.ATTEMPT_ANNOTATION] == "2"


def test_a_succeeded_stage_whose_job_was_cleaned_up_is_not_run_again():
    data = body()
    objects = observed(data, {"prepare": ["Complete"], "sft": ["Succeeded"], "reward": ["Running"]})
    pods = {
        "sft": launcher({"status": "completed", "metrics": {"eval/loss": 0.5, "note": "x", "flag": True}})
    }
    _, data = step(data, objects, pods)
    del objects[("MPIJob", "demo-sft")], objects[("Job", "demo-prepare")]  # ttlSecondsAfterFinished
    decision, data = step(data, objects)
    assert decision.actions == []
    sft = next(s for s in data["status"]["stages"] if s["name"] == "sft")
    assert sft["state"] == "Succeeded" and sft["metrics"] == {"eval/loss": 0.5}


def test_pods_are_needed_only_until_the_status_records_the_result():
    data = body()
    objects = observed(data, {"prepare": ["Complete"], "sft": ["Succeeded"], "reward": ["Running"]})
    assert pods_needed(data, objects) == ["sft"]  # a succeeded prepare Job's pod says nothing new
    pods = {"sft": launcher({"status": "completed", "metrics": {"eval/loss": 0.5}})}
    first, data = step(data, objects, pods)
    assert pods_needed(data, objects) == []  # recorded: the status is the memory
    again, _ = step(data, objects)  # and deciding without the pod changes nothing
    assert again.status == first.status and again.actions == [] and again.events == []
    sft = next(s for s in again.status["stages"] if s["name"] == "sft")
    assert sft["metrics"] == {"eval/loss": 0.5}


def test_a_recorded_failure_needs_no_pod_and_keeps_its_reason():
    failed = {"status": "failed", "reason": "CUDA out of memory"}
    # the prepare Job failed
    data = body()
    objects = observed(data, {"prepare": ["Failed"]})
    assert pods_needed(data, objects) == ["prepare"]
    first, data = step(data, objects, {"prepare": launcher(failed)})
    assert "CUDA out of memory" in {c["type"]: c for c in data["status"]["conditions"]}["Prepared"]["message"]
    assert pods_needed(data, objects) == []
    again, _ = step(data, objects)
    assert again.status == first.status and again.events == []
    # a stage's last attempt failed (retries: 1, so attempt 2 fails the run)
    data = body()
    objects = observed(
        data, {"prepare": ["Complete"], "sft": ["Failed"], "reward": ["Running"]}, attempt={"sft": 2}
    )
    assert pods_needed(data, objects) == ["sft"]
    first, data = step(data, objects, {"sft": launcher(failed)})
    assert data["status"]["phase"] == "Failed"
    assert "CUDA out of memory" in {c["type"]: c for c in data["status"]["conditions"]}["Failed"]["message"]
    assert pods_needed(data, objects) == []
    again, _ = step(data, objects)
    assert again.status == first.status and again.events == []
    # a new attempt that fails is not the recorded failure: its pod is read
    objects = observed(
        data, {"prepare": ["Complete"], "sft": ["Failed"], "reward": ["Running"]}, attempt={"sft": 3}
    )
    assert pods_needed(data, objects) == ["sft"]


def test_ppo_waits_for_both_stages():
    data = body()
    objects = observed(data, {"prepare": ["Complete"], "sft": ["Succeeded"], "reward": ["Running"]})
    decision, data = step(data, objects)
    assert not any(a.name == "demo-ppo" for a in decision.actions)
    objects = observed(data, {"prepare": ["Complete"], "sft": ["Succeeded"], "reward": ["Succeeded"]})
    decision, _ = step(data, objects)
    assert [a.name for a in decision.actions if a.kind == "MPIJob"] == ["demo-ppo"]


def test_resume_leaves_jobs_suspended_by_someone_else_alone():
    data = body()
    objects = observed(data, {"prepare": ["Complete"], "sft": ["Suspended"], "reward": ["Suspended"]})
    for key in (("MPIJob", "demo-sft"), ("MPIJob", "demo-reward")):
        objects[key]["spec"]["runPolicy"]["suspend"] = True  # Kueue holds them in its queue
    objects[("MPIJob", "demo-sft")]["metadata"]["annotations"][names.SUSPENDED_BY_RUN] = "true"
    decision, _ = step(data, objects)
    patched = {a.name: a.body for a in decision.actions if a.verb == "patch"}
    assert list(patched) == ["demo-sft"]
    assert patched["demo-sft"]["spec"]["runPolicy"]["suspend"] is False


def test_config_map_drift_is_patched_and_foreign_objects_block_their_step():
    data = body()
    objects = observed(data, {})
    objects[("ConfigMap", "demo-sft-trainer")]["data"] = {
        "config.yaml": "edited: by hand\n",
        "extra": "added",
    }
    objects[("ConfigMap", "demo-run")]["metadata"]["ownerReferences"] = []
    decision, new = step(data, objects)
    assert [(a.verb, a.name) for a in decision.actions] == [("patch", "demo-sft-trainer")]
    assert decision.actions[0].body["data"]["extra"] is None  # what was added by hand goes too
    conds = {c["type"]: c for c in new["status"]["conditions"]}
    assert conds["Prepared"]["reason"] == "NameConflict"


def test_invalid_run_has_no_actions_and_names_the_field():
    data = body()
    data["spec"]["storage"] = {"localDir": "runs/x"}
    decision, new = step(data, {})
    assert decision.actions == []
    valid = next(c for c in new["status"]["conditions"] if c["type"] == "Valid")
    assert valid["status"] == "False" and valid["message"].startswith("spec.storage.pvc")
    assert [e[1] for e in decision.events] == ["InvalidSpec", "RunInvalidSpec"]


def test_termination_messages_and_job_states():
    summary = StageSummary(stage="sft", metrics={"a": 1, "b": float("nan"), "c": "x"})
    assert metrics_of(summary) == {"a": 1.0} and metrics_of(StageFailure(reason="x")) == {}
    assert (
        termination_message(
            {
                "status": {
                    "containerStatuses": [
                        {
                            "name": "launcher",
                            "state": {"terminated": {"message": "Traceback...\nRuntimeError: boom"}},
                        }
                    ]
                }
            }
        ).reason
        == "RuntimeError: boom"
    )
    assert termination_message(None) is None
    assert (
        mpijob_state(
            {
                "status": {
                    "conditions": [
                        {"type": "Created", "status": "True"},
                        {"type": "Running", "status": "False"},
                    ]
                }
            }
        )[0]
        == "Pending"
    )
    assert (
        mpijob_state({"status": {"conditions": [{"type": "Restarting", "status": "True"}]}})[0] == "Running"
    )


def test_merge_patch_removes_keys_with_null():
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": 2}, "e": [1]}) == {
        "a": None,
        "b": {"d": None},
        "e": [1],
    }


def test_every_status_fits_the_rlhfrun_crd_schema():
    """A field the API server would prune would make every reconcile write the status again."""
    import jsonschema
    import yaml
    from test_render import ROOT, unknown_fields

    crd = yaml.safe_load((ROOT / "crds" / "rlhfrun.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    data = body()
    worlds = [
        {},
        {"prepare": ["Complete"], "sft": ["Created", "Running"], "reward": ["Failed"]},
        {"prepare": ["Complete"], "sft": ["Succeeded"], "reward": ["Succeeded"], "ppo": ["Suspended"]},
        {"prepare": ["Complete"], "sft": ["Succeeded"], "reward": ["Succeeded"], "ppo": ["Succeeded"]},
    ]
    pods = {s: launcher({"status": "completed", "metrics": {"eval/x": 1}}) for s in ("sft", "reward", "ppo")}
    for steps in worlds:
        decision, data = step(data, observed(data, steps), pods)
        jsonschema.validate(decision.status, schema, cls=jsonschema.Draft7Validator)
        assert unknown_fields(decision.status, schema) == []
    assert data["status"]["phase"] == "Succeeded"
    invalid = body(storage={"localDir": "x"})
    decision, _ = step(invalid, {})
    jsonschema.validate(decision.status, schema, cls=jsonschema.Draft7Validator)


def test_the_operator_creates_exactly_what_render_prints():
    data = body()
    created = []
    worlds = [
        {},
        {"prepare": ["Complete"]},
        {"prepare": ["Complete"], "sft": ["Succeeded"], "reward": ["Succeeded"]},
    ]
    for steps in worlds:
        decision, data = step(data, observed(data, steps) if steps else {})
        created += [a.body for a in decision.actions if a.verb == "create"]
    created = [c for c in created if c["kind"] != "ConfigMap"] + [
        c for c in created if c["kind"] == "ConfigMap"
    ]
    expected = render.children(admit(body(), CONFIG), CONFIG, uid=UID)
    expected = [c for c in expected if c["kind"] != "ConfigMap"] + [
        c for c in expected if c["kind"] == "ConfigMap"
    ]
    assert created == expected


# ---- finished jobs, failures that stop the run, and why pods do not start --------------------


def test_a_finished_job_is_deleted_by_the_operator_only_after_its_result_is_recorded_and_its_ttl():
    """The run's ttlSecondsAfterFinished is the operator's, not the jobs': a job removed while the
    operator was down must never look like one that did not run."""
    data = body(runPolicy={"ttlSecondsAfterFinished": 600})
    objects = observed(data, {"prepare": ["Complete"], "sft": ["Succeeded"], "reward": ["Running"]})
    objects[("MPIJob", "demo-sft")]["status"]["completionTime"] = "2026-01-01T00:00:00Z"
    assert "ttlSecondsAfterFinished" not in objects[("MPIJob", "demo-sft")]["spec"]["runPolicy"]
    pods = {"sft": launcher({"status": "completed", "metrics": {"eval/loss": 0.5}})}
    first, data = step(data, objects, pods, now=T0 + timedelta(seconds=60))
    assert not [a for a in first.actions if a.verb == "delete"]
    assert first.requeue_after == 540  # the soonest TTL to run out: SFT's
    later, data = step(data, objects, now=T0 + timedelta(seconds=601))
    assert [(a.verb, a.kind, a.name, a.uid) for a in later.actions] == [
        ("delete", "MPIJob", "demo-sft", "sft-uid")
    ]
    del objects[("MPIJob", "demo-sft")]
    gone, data = step(data, objects, now=T0 + timedelta(seconds=602))
    assert not [a for a in gone.actions if a.kind == "MPIJob"]  # never run again
    assert next(s for s in data["status"]["stages"] if s["name"] == "sft")["state"] == "Succeeded"


def test_a_retry_deletes_the_failed_attempt_in_the_foreground():
    data = body()
    objects = observed(data, {"prepare": ["Complete"], "sft": ["Failed"], "reward": ["Running"]})
    decision, _ = step(data, objects)
    (delete,) = [a for a in decision.actions if a.verb == "delete"]
    assert delete.name == "demo-sft" and delete.foreground  # its pods must be gone before attempt 2


def test_a_final_failure_stops_the_running_sibling_and_starts_nothing():
    data = body()
    objects = observed(
        data, {"prepare": ["Complete"], "sft": ["Failed"], "reward": ["Running"]}, attempt={"sft": 2}
    )
    decision, data = step(data, objects, {"sft": launcher({"status": "failed", "reason": "bad data"})})
    assert [(a.verb, a.name) for a in decision.actions] == [("delete", "demo-reward")]
    states = {s["name"]: s["state"] for s in data["status"]["stages"]}
    assert states == {"sft": "Failed", "reward": "Stopped"}
    conds = {c["type"]: c for c in data["status"]["conditions"]}
    assert (
        conds["RewardSucceeded"]["reason"] == "Stopped" and "bad data" in conds["RewardSucceeded"]["message"]
    )
    assert ("Warning", "RewardStopped") in [(t, r) for t, r, _ in decision.events]
    del objects[("MPIJob", "demo-reward")]
    again, _ = step(data, objects)
    assert not [a for a in again.actions if a.kind == "MPIJob"]  # the stopped stage is not recreated


def test_a_job_the_api_server_refuses_as_invalid_fails_the_run():
    data = body()
    objects = observed(data, {"prepare": ["Complete"]})
    refusal = Refusal(
        "cannot create MPIJob demo-sft: 422 Invalid: spec.mpiReplicaSpecs[Worker].replicas: Invalid value",
        permanent=True,
    )
    decision, data = step(data, objects, failures={"demo-sft": refusal})
    assert data["status"]["phase"] == "Failed"
    conds = {c["type"]: c for c in data["status"]["conditions"]}
    assert conds["SFTSucceeded"]["reason"] == "CreateFailed" and "422" in conds["Failed"]["message"]
    assert not [a for a in decision.actions if a.verb == "create" and a.kind == "MPIJob"]
    # a refusal that may pass later (quota, webhook) keeps the run going and says why
    data = body()
    decision, data = step(
        data,
        objects,
        failures={"demo-sft": Refusal("cannot create MPIJob demo-sft: 403 Forbidden: exceeded quota")},
    )
    assert data["status"]["phase"] == "Running"
    assert [a.name for a in decision.actions if a.kind == "MPIJob"] == ["demo-sft", "demo-reward"]


def test_why_pods_do_not_start():
    job = {"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}}
    unschedulable = {
        "metadata": {"name": "demo-sft-worker-0"},
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ]
        },
    }
    assert diagnose(job, [], [unschedulable]) == Blocked(
        "Unschedulable",
        "pod demo-sft-worker-0 cannot be scheduled: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    )
    pull = {
        "metadata": {"name": "p"},
        "status": {
            "containerStatuses": [
                {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}
            ]
        },
    }
    assert diagnose(job, [], [pull]).reason == "ContainerWaiting"
    creating = {
        "metadata": {"name": "p"},
        "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]},
    }
    assert diagnose(job, [], [creating]) is None

    def event(reason: str, when: str, message: str = "x") -> dict[str, Any]:
        return {
            "type": "Warning",
            "reason": reason,
            "message": message,
            "lastTimestamp": when,
            "involvedObject": {"name": "demo-sft-launcher"},
        }

    forbidden = event("FailedCreate", "2026-01-01T00:00:05Z", 'pods "x" is forbidden: violates PodSecurity')
    assert diagnose(job, [forbidden], []) == Blocked(
        "Blocked", 'demo-sft-launcher: FailedCreate: pods "x" is forbidden: violates PodSecurity'
    )
    # a warning that blocks nothing, and one of an earlier attempt of the same name, say nothing
    benign = event("SetPodTemplateRestartPolicy", "2026-01-01T00:00:05Z")
    earlier = event("FailedCreate", "2025-12-31T23:59:00Z")
    assert diagnose(job, [benign, earlier], []) is None


def test_a_diagnosed_step_says_why_and_is_not_running():
    data = body()
    objects = observed(data, {"prepare": []})
    assert diagnostics_needed(data, objects) == {"prepare": ["demo-prepare"]}
    blocked = {"prepare": Blocked("Unschedulable", "pod demo-prepare-x cannot be scheduled: no nodes")}
    decision, data = step(data, objects, blocked=blocked)
    conds = {c["type"]: c for c in data["status"]["conditions"]}
    assert conds["Prepared"]["reason"] == "Unschedulable" and "no nodes" in conds["Prepared"]["message"]
    assert ("Warning", "PrepareUnschedulable") in [(t, r) for t, r, _ in decision.events]
    assert data["status"]["stage"] == "prepare"
    objects = observed(data, {"prepare": ["Complete"], "sft": ["Created", "Running"], "reward": ["Created"]})
    assert diagnostics_needed(data, objects) == {"reward": ["demo-reward", "demo-reward-launcher"]}
    _, data = step(data, objects)
    assert data["status"]["stage"] == "sft,reward"


def test_suspending_and_resuming_tell_it_once():
    data = body()
    objects = observed(
        data, {"prepare": ["Complete"], "sft": ["Created", "Running"], "reward": ["Created", "Running"]}
    )
    _, data = step(data, objects)
    data["spec"]["runPolicy"]["suspend"] = True
    suspended, data = step(data, objects)
    assert [r for _, r, _ in suspended.events] == ["Suspended"]
    data["spec"]["runPolicy"]["suspend"] = False
    for key in (("MPIJob", "demo-sft"), ("MPIJob", "demo-reward")):
        objects[key]["spec"]["runPolicy"]["suspend"] = True
        objects[key]["metadata"]["annotations"][names.SUSPENDED_BY_RUN] = "true"
    resumed, _ = step(data, objects)
    told = [(r, m) for _, r, m in resumed.events]
    assert [r for r, _ in told].count("Resumed") == 1 and all(m for _, m in told), told
