"""Launcher environment mapping and accelerator selection (pure, no process group)."""

from __future__ import annotations

import pytest

from rlhf.engine import accelerator, distributed


def test_openmpi_env_is_mapped_to_torch_env():
    env = {
        "OMPI_COMM_WORLD_RANK": "3",
        "OMPI_COMM_WORLD_SIZE": "8",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
    }
    out = distributed.torch_env(env, master_addr="worker-0.svc")
    assert out == {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "worker-0.svc",
        "MASTER_PORT": distributed.DEFAULT_MASTER_PORT,
    }


def test_launcher_env_wins_over_mpi_and_defaults():
    env = {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "h",
        "MASTER_PORT": "1234",
        "OMPI_COMM_WORLD_RANK": "0",
    }
    assert distributed.torch_env(env) == {}


def test_single_process_gets_rank_zero_on_a_free_port():
    out = distributed.torch_env({})
    assert out["RANK"] == "0" and out["WORLD_SIZE"] == "1" and out["LOCAL_RANK"] == "0"
    assert out["MASTER_ADDR"] == "127.0.0.1" and 0 < int(out["MASTER_PORT"]) < 65536


def test_setup_env_fills_given_mapping():
    env = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
    info = distributed.setup_env(env)
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (1, 2, 1, False)
    assert env["MASTER_PORT"] == "29500"


def test_accelerator_forced_and_properties(monkeypatch):
    monkeypatch.setenv("RLHF_ACCELERATOR", "hpu")
    hpu = accelerator.detect()
    assert (hpu.backend, hpu.static_shapes, hpu.needs_fp32_loss) == ("hccl", True, True)
    monkeypatch.setenv("RLHF_ACCELERATOR", "cpu")
    cpu = accelerator.detect()
    assert (cpu.backend, cpu.static_shapes, str(cpu.device(3))) == ("gloo", False, "cpu")
    cpu.mark_step()  # a no-op off Gaudi
    monkeypatch.setenv("RLHF_ACCELERATOR", "tpu")
    with pytest.raises(ValueError, match="RLHF_ACCELERATOR"):
        accelerator.detect()


def test_cpu_is_detected_here(monkeypatch):
    monkeypatch.delenv("RLHF_ACCELERATOR", raising=False)
    assert accelerator.detect().name == "cpu"
