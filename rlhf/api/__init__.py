"""The RLHFRun API (``rlhf.dev/v1alpha1``), typed (no torch): load, check, and map to trainer configs.

* :func:`load_manifest` parses a manifest (file or dict) into :class:`RLHFRun`; errors name the
  field (``spec.stages.sft.nodes: ...``). :func:`validate` runs the admission checks.
* :func:`stage_config` is the contract with the trainer: the config of one stage.
* :class:`PoolPolicy` (``rlhf.api.pools``): the admin-owned node pools of a cluster and what a run
  may choose on each; the operator's admission and ``rlhf validate --operator-config`` apply it.
* ``python -m rlhf.api.crd`` prints the CRD (``crds/rlhfrun.yaml``) generated from these types.
"""

from rlhf.api.errors import SpecError
from rlhf.api.graph import PREPARE, STAGE_NAMES, STEPS, condition_type
from rlhf.api.load import load_manifest, read_manifest, validate
from rlhf.api.meta import (
    API_VERSION,
    CRD_NAME,
    GROUP,
    KIND,
    MAX_NAME_LENGTH,
    PLURAL,
    VERSION,
    ObjectMeta,
)
from rlhf.api.pools import Pool, PoolPolicy, TrainerImages, load_policy
from rlhf.api.run import (
    DEVICE_RESOURCES,
    PVC_MOUNT_PATH,
    TRAINER_ACCELERATORS,
    DataSpec,
    ModelsSpec,
    PVCStorage,
    RLHFRun,
    RLHFRunSpec,
    RunPolicySpec,
    SchedulingSpec,
    StorageSpec,
    Toleration,
)
from rlhf.api.stages import LoraSpec, ResourcesSpec, StageSpec, StagesSpec
from rlhf.api.status import Condition, RLHFRunStatus, StageStatus
from rlhf.api.trainer import config_text, stage_config, stage_configs, storage_root

__all__ = [
    "PREPARE",
    "STEPS",
    "condition_type",
    "config_text",
    "stage_configs",
    "API_VERSION",
    "CRD_NAME",
    "DEVICE_RESOURCES",
    "GROUP",
    "KIND",
    "MAX_NAME_LENGTH",
    "PLURAL",
    "PVC_MOUNT_PATH",
    "STAGE_NAMES",
    "TRAINER_ACCELERATORS",
    "VERSION",
    "Condition",
    "DataSpec",
    "LoraSpec",
    "ModelsSpec",
    "ObjectMeta",
    "PVCStorage",
    "Pool",
    "PoolPolicy",
    "RLHFRun",
    "RLHFRunSpec",
    "RLHFRunStatus",
    "ResourcesSpec",
    "RunPolicySpec",
    "SchedulingSpec",
    "SpecError",
    "StageSpec",
    "StageStatus",
    "StagesSpec",
    "StorageSpec",
    "Toleration",
    "TrainerImages",
    "load_manifest",
    "load_policy",
    "read_manifest",
    "stage_config",
    "storage_root",
    "validate",
]
