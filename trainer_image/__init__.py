"""The trainer images' entrypoint, ``rlhf-entrypoint`` (import name ``rlhf_entrypoint``).

* :mod:`.entrypoint`: the command line (``launch``, ``stage``, ``sshd``);
* :mod:`.env`: OpenMPI's environment -> torch.distributed's, master address, accelerator defaults;
* :mod:`.launch`: the MPIJob launcher around ``mpirun``;
* :mod:`.termination`: the termination message the operator reads (< 4096 bytes);
* :mod:`.sshd`: the MPIJob workers' non-root sshd;
* :mod:`.build_constraints`: pip constraints for installing into a vendor image (used by the Dockerfiles).
"""
