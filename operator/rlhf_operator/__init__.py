"""The rlhf-operator (import name ``rlhf_operator``): RLHFRun -> one Kubeflow MPIJob per stage. No torch."""
