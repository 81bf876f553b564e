"""The trainer container's entrypoint (import name ``rlhf_entrypoint``): MPI env -> torch.distributed env."""
