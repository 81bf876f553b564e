"""rlhf-entrypoint (the trainer image's entrypoint): env mapping, termination messages, launcher, sshd.

The slow tier runs a real 2-rank SFT stage through `launch -- mpirun ... stage sft`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from rlhf_entrypoint import env as envmod
from rlhf_entrypoint import launch as launchmod
from rlhf_entrypoint import sshd as sshdmod
from rlhf_entrypoint import termination
from rlhf_entrypoint.entrypoint import main

from rlhf.config import apply_overrides
from rlhf.engine.distributed import free_port

ENTRYPOINT = str(Path(sys.executable).parent / "rlhf-entrypoint")
OMPI = {
    "OMPI_COMM_WORLD_RANK": "3",
    "OMPI_COMM_WORLD_SIZE": "8",
    "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
}


# ---------------------------------------------------------------- environment of a rank


def test_hostfile_formats_and_errors(tmp_path):
    text = (
        "# MPI operator\nrun-worker-0.run-worker.ns.svc slots=8\n\n"
        "run-worker-1.run-worker.ns.svc slots=8 max_slots=8\n"
    )
    assert envmod.parse_hostfile(text) == ["run-worker-0.run-worker.ns.svc", "run-worker-1.run-worker.ns.svc"]
    assert envmod.parse_hostfile("a.svc:4\nb.svc:4\n") == ["a.svc", "b.svc"]  # Intel MPI / MPICH
    with pytest.raises(envmod.EnvError, match=r"hosts:2: cannot read a host name"):
        envmod.parse_hostfile("ok slots=1\nslots=2\n", "hosts")
    assert envmod.read_hosts(tmp_path / "missing") == []


def test_master_address_sources(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("w-0.svc slots=2\nw-1.svc slots=2\n")
    assert envmod.master_addr({"RLHF_HOSTFILE": str(hostfile)}) == "w-0.svc"
    # what the MPI operator sets in the launcher
    assert envmod.master_addr({"OMPI_MCA_orte_default_hostfile": str(hostfile)}) == "w-0.svc"
    assert envmod.master_addr({"RLHF_HOSTFILE": str(hostfile), "RLHF_MASTER_ADDR": "10.0.0.7"}) == "10.0.0.7"
    assert envmod.master_addr({"RLHF_HOSTFILE": str(tmp_path / "none")}) is None


def test_stage_env_maps_openmpi(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("w-0.svc slots=4\nw-1.svc slots=4\n")
    added = envmod.stage_env(
        {**OMPI, "RLHF_HOSTFILE": str(hostfile), "RLHF_MASTER_PORT": "23456", "RLHF_ACCELERATOR": "cpu"},
        cpus=16,
    )
    assert added["RANK"] == "3" and added["WORLD_SIZE"] == "8"
    assert added["LOCAL_RANK"] == "1" and added["LOCAL_WORLD_SIZE"] == "4"
    assert added["MASTER_ADDR"] == "w-0.svc" and added["MASTER_PORT"] == "23456"
    assert added["OMP_NUM_THREADS"] == "4"  # 16 CPUs shared by 4 local ranks
    assert added["DS_ACCELERATOR"] == "cpu"
    # the default port, and variables already set win
    added = envmod.stage_env(
        {**OMPI, "MASTER_ADDR": "m", "OMP_NUM_THREADS": "2", "RLHF_ACCELERATOR": "cuda"}, cpus=16
    )
    assert added["MASTER_PORT"] == "29500"
    assert "MASTER_ADDR" not in added and "OMP_NUM_THREADS" not in added
    assert added["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and added["DS_ACCELERATOR"] == "cuda"
    # one machine without a hostfile: the master is this machine
    assert (
        envmod.stage_env({**OMPI, "RLHF_HOSTFILE": str(tmp_path / "none")}, cpus=1)["MASTER_ADDR"]
        == "127.0.0.1"
    )


def test_stage_env_errors():
    with pytest.raises(envmod.EnvError, match="RLHF_MASTER_PORT"):
        envmod.stage_env({**OMPI, "RLHF_MASTER_PORT": "http"}, cpus=1)
    with pytest.raises(envmod.EnvError, match="RLHF_ACCELERATOR must be one of cuda, hpu, cpu, got 'gpu'"):
        envmod.stage_env({**OMPI, "RLHF_ACCELERATOR": "gpu"}, cpus=1)


def test_accelerator_env():
    from rlhf.api.environment import ACCELERATOR_ENV, stage_process_env

    hpu = envmod.accelerator_env("hpu", local_ranks=8, cpus=160)
    assert hpu == {"OMP_NUM_THREADS": "20", **ACCELERATOR_ENV["hpu"]}
    # one table: what the operator puts in a Gaudi pod is what the entrypoint defaults to
    assert stage_process_env("habana").items() >= ACCELERATOR_ENV["hpu"].items()
    cuda = envmod.accelerator_env("cuda", local_ranks=8, cpus=4)
    assert cuda["OMP_NUM_THREADS"] == "1" and cuda["NCCL_DEBUG"] == "WARN"
    assert envmod.accelerator_env(None, local_ranks=2, cpus=8) == {"OMP_NUM_THREADS": "4"}


def test_available_cpus_honours_cgroup_quota(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("50000 100000\n")  # half a CPU -> 1
    assert envmod.available_cpus(v2) == 1
    (v2 / "cpu.max").write_text("max 100000\n")
    assert envmod.available_cpus(v2) == affinity
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert envmod.available_cpus(tmp_path / "v1") == 1
    assert envmod.available_cpus(tmp_path / "nothing") == affinity


_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # In-process stage tests leave RANK, MASTER_ADDR, ... in os.environ: a fresh rank must not see them.
    base = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**base, **(env or {})}
    )


def test_stage_dry_run_prints_env_and_trainer_command_without_torch(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("w-0.svc slots=4\n")
    code = (
        "import sys; from rlhf_entrypoint.entrypoint import main; "
        "rc = main(['stage', 'reward', '--config', 'c.yaml', 'optim.epochs=1', '--dry-run']); "
        "print('torch' in sys.modules, file=sys.stderr); sys.exit(rc)"
    )
    proc = _python(code, {**OMPI, "RLHF_HOSTFILE": str(hostfile)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "False"
    out = json.loads(proc.stdout)
    assert out["argv"][1:] == ["-m", "rlhf", "train", "reward", "--config", "c.yaml", "optim.epochs=1"]
    assert out["env"]["RANK"] == "3" and out["env"]["MASTER_ADDR"] == "w-0.svc"


def test_stage_reports_a_bad_environment(monkeypatch, capsys):
    monkeypatch.setenv("RLHF_ACCELERATOR", "tpu")
    assert main(["stage", "sft", "--config", "x.yaml", "--dry-run"]) == 2
    assert "RLHF_ACCELERATOR must be one of" in capsys.readouterr().err


def test_cli_usage_errors(capsys):
    with pytest.raises(SystemExit):
        main(["launch", "--config", "x.yaml"])
    assert "give the command to run after `--`" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sshd", "extra=1"])


# ---------------------------------------------------------------- termination messages


def _big_summary() -> dict:
    return {
        "stage": "reward",
        "status": "completed",
        "global_step": 1200,
        "total_steps": 1200,
        "metrics": {f"eval/metric_{i:03d}": i / 7 for i in range(150)},
        "model_dir": "/mnt/rlhf/run/reward/model",
        "data": {f"source_{i}": "x" * 40 for i in range(60)},
        "world_size": 16,
    }


def test_small_summary_is_kept_whole():
    summary = {
        "stage": "sft",
        "status": "completed",
        "global_step": 8,
        "metrics": {"eval/perplexity": 3.2},
        "model_dir": "/m",
        "world_size": 2,
        "data": {"train": 10},
    }
    assert termination.compact_summary(summary) == summary


def test_large_summary_is_compacted_below_4096_bytes():
    summary = _big_summary()
    assert len(termination.encode(summary)) > 4096
    message = termination.compact_summary(summary)
    assert len(termination.encode(message)) < 4096
    assert message["truncated"] is True
    for key in ("stage", "status", "global_step", "model_dir"):
        assert message[key] == summary[key]
    assert "data" not in message
    assert message["metrics"] and set(message["metrics"]) < set(summary["metrics"])
    assert all(summary["metrics"][k] == v for k, v in message["metrics"].items())


def test_pathological_summary_still_fits():
    summary = {
        "stage": "sft",
        "status": "completed",
        "global_step": 1,
        "metrics": "not a dict",
        "model_dir": "/é" * 5000,
    }
    message = termination.compact_summary(summary)
    assert len(termination.encode(message)) < 4096
    assert message["status"] == "completed" and message["model_dir"].startswith("/é/é")


def test_failure_message_keeps_the_last_lines_and_fits():
    tail = [f"line {i} " + "x" * 500 for i in range(200)] + ["[1,0]<stderr>:RuntimeError: NCCL timeout"]
    message = termination.failure_message("mpirun exited with code 1", 1, tail)
    data = termination.encode(message)
    assert len(data) < 4096
    assert message["status"] == "failed" and message["exit_code"] == 1
    lines = message["log_tail"].splitlines()
    assert lines[-1] == "[1,0]<stderr>:RuntimeError: NCCL timeout"
    assert lines[-2].startswith("line 199 ") and len(lines[-2]) <= termination.MAX_LINE
    assert termination.error_line(tail) == "RuntimeError: NCCL timeout"
    assert termination.error_line(["error: optim.lr: unknown key", "done"]) == "error: optim.lr: unknown key"
    assert termination.error_line(["all good"]) is None
    config_error = [
        "error: invalid SFTConfig in c.yaml:",
        "  optim.lr: unknown key",
        "  seed: not an int",
        "next",
    ]
    assert (
        termination.error_line(config_error)
        == "error: invalid SFTConfig in c.yaml: optim.lr: unknown key; seed: not an int"
    )


def test_write_never_raises(tmp_path, capsys):
    assert not termination.write(tmp_path / "no" / "such" / "dir", {"status": "failed"})
    assert "cannot write the termination message" in capsys.readouterr().err


# ---------------------------------------------------------------- launcher


def _config(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    cfg = tmp_path / "stage.yaml"
    cfg.write_text(yaml.safe_dump({"checkpoint": {"output_dir": str(out)}}))
    return cfg, out


def _launch(tmp_path, cmd, **kw):
    cfg, _ = _config(tmp_path)
    log = tmp_path / "termination-log"
    sink = tmp_path / "stdout"
    with sink.open("wb") as out:
        code = launchmod.launch(cfg, cmd, log, hostfile=tmp_path / "no-hostfile", out=out, **kw)
    message = json.loads(log.read_text()) if log.exists() else None
    return code, message, sink.read_text()


def test_launch_success_writes_the_summary(tmp_path):
    _, out = _config(tmp_path)
    summary = {
        "stage": "sft",
        "status": "completed",
        "global_step": 4,
        "metrics": {"eval/perplexity": 2.5},
        "model_dir": str(out / "model"),
    }
    script = (
        f"import json, pathlib; p = pathlib.Path({str(out)!r}); p.mkdir(parents=True); "
        f"print('training'); (p / 'summary.json').write_text(json.dumps({summary!r}))"
    )
    code, message, stdout = _launch(tmp_path, [sys.executable, "-c", script])
    assert code == 0 and message == summary
    assert stdout == "training\n"


def test_launch_failure_propagates_the_exit_code_with_the_log_tail(tmp_path):
    script = (
        "import sys; print('step 1'); print('ValueError: data.paths is empty', file=sys.stderr); sys.exit(3)"
    )
    code, message, stdout = _launch(tmp_path, [sys.executable, "-c", script])
    assert code == 3
    assert message["status"] == "failed" and message["exit_code"] == 3
    assert message["reason"].endswith("exited with code 3: ValueError: data.paths is empty")
    assert message["log_tail"] == "step 1\nValueError: data.paths is empty"


def test_launch_reports_a_killed_command(tmp_path):
    code, message, _ = _launch(
        tmp_path, [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    )
    assert code == 128 + signal.SIGKILL
    assert "was killed by SIGKILL" in message["reason"]


def test_launch_without_summary_is_a_failure(tmp_path):
    code, message, _ = _launch(tmp_path, [sys.executable, "-c", "print('no summary')"], wait_summary=0.2)
    assert code == 1
    assert message["status"] == "failed" and "wrote no" in message["reason"] and message["exit_code"] == 0


def test_launch_missing_program_and_bad_config(tmp_path):
    code, message, _ = _launch(tmp_path, ["/nonexistent/mpirun", "-np", "2"])
    assert code == 127 and "cannot start /nonexistent/mpirun" in message["log_tail"]
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("seed: 1\n")
    log = tmp_path / "log2"
    assert launchmod.launch(cfg, ["true"], log, hostfile=tmp_path / "none") == 2
    assert "checkpoint.output_dir is not set" in json.loads(log.read_text())["reason"]


def test_summary_that_shows_up_late_is_read(tmp_path):
    _, out = _config(tmp_path)
    out.mkdir()
    calls = []

    def sleep(_seconds):
        calls.append(1)
        if len(calls) == 2:
            (out / "summary.json").write_text('{"status": "completed"}')

    assert launchmod.read_summary(out, wait=60, sleep=sleep) == {"status": "completed"}
    assert len(calls) == 2


def test_output_dir_follows_command_line_overrides(tmp_path):
    cfg, out = _config(tmp_path)
    assert launchmod.output_dir(cfg, ["mpirun", "x"]) == out
    assert launchmod.output_dir(cfg, ["mpirun", "x", "checkpoint.output_dir=/elsewhere"]) == Path(
        "/elsewhere"
    )


def test_forward_env_adds_mpirun_exports():
    environ = {"RLHF_ACCELERATOR": "hpu", "RLHF_MASTER_PORT": "1234", "PATH": "/bin"}
    cmd = ["mpirun", "-np", "16", "-x", "RLHF_MASTER_PORT", "rlhf-entrypoint", "stage", "sft"]
    out = launchmod.forward_env(cmd, environ, {"RLHF_MASTER_ADDR": "w-0.svc"})
    assert out == ["mpirun", "-x", "RLHF_ACCELERATOR=hpu", "-x", "RLHF_MASTER_ADDR=w-0.svc", *cmd[1:]]
    assert launchmod.forward_env(["python", "x.py"], environ, {"RLHF_MASTER_ADDR": "a"}) == ["python", "x.py"]


def test_wait_for_hosts():
    seen = []

    def resolve(host):
        seen.append(host)
        if host == "late" and seen.count("late") < 3:
            raise socket.gaierror("not yet")

    launchmod.wait_for_hosts(["a", "late", "a"], timeout=60, resolve=resolve, sleep=lambda s: None)
    assert seen.count("late") == 3 and seen.count("a") == 1
    with pytest.raises(launchmod.LaunchError, match="did not resolve within 0.2s: never"):
        launchmod.wait_for_hosts(
            ["localhost", "never"],
            timeout=0.2,
            resolve=lambda h: (_ for _ in ()).throw(OSError()) if h == "never" else None,
        )


def test_launch_forwards_sigterm_and_does_not_import_torch(tmp_path):
    cfg, _ = _config(tmp_path)
    log = tmp_path / "termination-log"
    child = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('child got SIGTERM', flush=True), sys.exit(7)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    code = (
        "import sys; from rlhf_entrypoint.entrypoint import main\n"
        f"rc = main(['launch', '--config', {str(cfg)!r}, '--termination-log', {str(log)!r}, "
        f"'--wait-hosts', '0', '--', {sys.executable!r}, '-c', {child!r}])\n"
        "print('torch imported:', 'torch' in sys.modules, flush=True); sys.exit(rc)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 7, err
    assert "child got SIGTERM" in out and "torch imported: False" in out
    message = json.loads(log.read_text())
    assert message["exit_code"] == 7 and "child got SIGTERM" in message["log_tail"]


# ---------------------------------------------------------------- worker sshd


def test_sshd_config(tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("job key")
    state = sshdmod.state_dir(home)
    assert state == home / ".sshd"
    (state / "ssh_host_ed25519_key").write_text("image key")
    keys = sshdmod.host_keys(home, state)
    assert keys == [home / ".ssh" / "id_rsa", state / "ssh_host_ed25519_key"]
    env = {
        "PATH": "/opt/conda/bin:/usr/bin",
        "RLHF_ACCELERATOR": "cuda",
        "HOME": "/x",
        "SSH_AUTH_SOCK": "s",
        "BAD": 'has "quotes"',
        "SPACED": "a b",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "RUN_WORKER_PORT_22_TCP_ADDR": "10.0.0.2",
        "RUN_WORKER_PORT": "tcp://10.0.0.2:22",
        "MASTER_PORT": "29500",
    }
    text, skipped = sshdmod.sshd_config(
        port=2222, keys=keys, state=state, home=home, user="mpiuser", environ=env
    )
    lines = text.splitlines()
    for expected in (
        "Port 2222",
        "StrictModes no",
        "UsePAM no",
        "PasswordAuthentication no",
        "AllowUsers mpiuser",
        f"AuthorizedKeysFile {home}/.ssh/authorized_keys",
        f"HostKey {home}/.ssh/id_rsa",
    ):
        assert expected in lines
    setenv = [line for line in lines if line.startswith("SetEnv ")]
    assert setenv == [
        'SetEnv "MASTER_PORT=29500" "PATH=/opt/conda/bin:/usr/bin" "RLHF_ACCELERATOR=cuda" "SPACED=a b"'
    ]
    assert skipped == ["BAD"]
    # a uid without a passwd entry: no AllowUsers line (sshd checks the account itself)
    text, _ = sshdmod.sshd_config(port=2222, keys=keys, state=state, home=home, user=None, environ={})
    assert "AllowUsers" not in text and "SetEnv" not in text


def test_sshd_state_falls_back_to_a_temporary_dir_and_generates_a_key(tmp_path):
    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen (openssh-client) is not installed")
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    state = sshdmod.state_dir(home)
    assert state.is_dir() and state != home / ".sshd"
    keys = sshdmod.host_keys(home, state)
    assert keys == [state / "ssh_host_ed25519_key"] and keys[0].read_text().startswith(
        "-----BEGIN OPENSSH PRIVATE KEY"
    )
    shutil.rmtree(state)


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sshd exited with {proc.returncode}: {proc.stderr.read()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError("sshd did not start listening")


def test_sshd_accepts_the_job_key_and_passes_the_container_env(tmp_path):
    """A real sshd started by `rlhf-entrypoint sshd`: key login works, the session sees the container's
    env."""
    if not (
        shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:" + os.environ.get("PATH", ""))
        and shutil.which("ssh")
    ):
        pytest.skip("openssh-server/openssh-client are not installed (`make setup` installs them)")
    if os.getuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # root's sshd needs its privilege-separation dir
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    shutil.copy(key.with_suffix(".pub"), home / ".ssh" / "authorized_keys")
    port = free_port()
    env = {
        **os.environ,
        "HOME": str(home),
        "RLHF_PROBE": "value with spaces",
        "PATH": f"/opt/probe/bin:{os.environ['PATH']}",
    }
    proc = subprocess.Popen(
        [ENTRYPOINT, "sshd", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_port(port, proc)
        ssh = subprocess.run(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-p",
                str(port),
                "-i",
                str(key),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "127.0.0.1",
                'echo "$RLHF_PROBE|$PATH"',
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ssh.returncode == 0, ssh.stderr
        probe, path = ssh.stdout.strip().split("|")
        assert probe == "value with spaces"
        assert "/opt/probe/bin" in path.split(":")  # the login shell may add entries, never drop ours
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()


# ------------------------------------------------------------ the real thing: mpirun through the entrypoint

ENV_KEYS = (
    "OMP_NUM_THREADS",
    "DS_ACCELERATOR",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TORCH_EXTENSIONS_DIR",
    "TOKENIZERS_PARALLELISM",
)


def _mpirun_job(tmp_path: Path, cfg: Path, stage: str = "sft") -> tuple[subprocess.CompletedProcess, Path]:
    if not shutil.which("mpirun"):
        pytest.skip("OpenMPI's mpirun is not installed (make setup installs openmpi-bin)")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    log = tmp_path / "termination-log"
    mpirun = [
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        "2",
        "--mca",
        "btl",
        "self,vader",
        "--mca",
        "oob_tcp_if_include",
        "lo",
        "--hostfile",
        str(hostfile),
    ]
    for key in ENV_KEYS:
        mpirun += ["-x", key]
    cmd = [
        ENTRYPOINT,
        "launch",
        "--config",
        str(cfg),
        "--termination-log",
        str(log),
        "--hostfile",
        str(hostfile),
        "--",
        *mpirun,
        ENTRYPOINT,
        "stage",
        stage,
        "--config",
        str(cfg),
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(RLHF_MASTER_PORT=str(free_port()), RLHF_ACCELERATOR="cpu")
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"the job did not finish in time:\n{out[-3000:]}\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), log


@pytest.mark.slow
def test_mpirun_through_the_entrypoint_trains_sft_and_writes_the_termination_message(tiny, tmp_path):
    out = tmp_path / "sft"
    data = apply_overrides(
        {},
        tiny.sft_overrides(
            out, "optim.max_steps=4", "deepspeed.zero_stage=1", "deepspeed.dist_timeout_seconds=120"
        ),
    )
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump(data))
    proc, log = _mpirun_job(tmp_path, cfg)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    # the launcher told every rank where rank 0 is and which accelerator to use
    assert "-x RLHF_ACCELERATOR=cpu" in proc.stderr and "-x RLHF_MASTER_ADDR=localhost" in proc.stderr
    message = json.loads(log.read_text())
    assert len(log.read_bytes()) < 4096
    summary = json.loads((out / "summary.json").read_text())
    assert message["stage"] == "sft" and message["status"] == "completed" and message["global_step"] == 4
    assert message["world_size"] == 2 and message["metrics"] == summary["metrics"]
    assert "eval/perplexity" in message["metrics"]
    assert Path(message["model_dir"], "config.json").is_file()


@pytest.mark.slow
def test_mpirun_failure_reaches_the_termination_message(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "checkpoint": {"output_dir": str(tmp_path / "out")},
                "model": {"name_or_path": "x"},
                "optim": {"learnig_rate": 1.0},
            }
        )
    )
    proc, log = _mpirun_job(tmp_path, cfg)
    assert proc.returncode != 0
    message = json.loads(log.read_text())
    assert message["status"] == "failed" and message["exit_code"] == proc.returncode
    assert "optim.learnig_rate: unknown key" in message["reason"] and "learnig_rate" in message["log_tail"]
