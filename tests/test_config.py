import subprocess
import sys

import pytest

from rlhf.config import STAGES, ConfigError, RewardConfig, SFTConfig, dump, load
from rlhf.engine.ds_config import build_ds_config

BASE = ["model.name_or_path=m", "checkpoint.output_dir=/tmp/out", "data.paths=[d.jsonl]"]


def test_yaml_plus_dotted_overrides(tmp_path):
    f = tmp_path / "sft.yaml"
    f.write_text(
        "model: {name_or_path: m}\ncheckpoint: {output_dir: o}\ndata: {paths: [a.jsonl]}\n"
        "optim: {learning_rate: 1.0e-4, epochs: 2}\n"
    )
    cfg = load(SFTConfig, f, ["optim.epochs=3", "deepspeed.zero_stage=2", "data.split=6,2,2", "lora.dim=8"])
    assert cfg.optim.learning_rate == 1e-4
    assert cfg.optim.epochs == 3
    assert cfg.deepspeed.zero_stage == 2
    assert cfg.data.split == (6.0, 2.0, 2.0)
    assert cfg.lora.enabled
    assert cfg.data_cache_dir == "o/data_cache"


def test_exponent_without_dot_is_a_float():
    # YAML 1.1 reads 1e-4 as a string; the typed config still takes it as the float it means.
    assert load(SFTConfig, None, [*BASE, "optim.learning_rate=1e-4"]).optim.learning_rate == 1e-4


def test_string_sources_and_typed_sources():
    cfg = load(SFTConfig, None, [*BASE[:2], "data.paths=[a, {path: Dahoas/rm-static, format: hh}]"])
    assert [(s.path, s.format) for s in cfg.data.paths] == [("a", "auto"), ("Dahoas/rm-static", "hh")]


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("optim.learnig_rate=1", "optim.learnig_rate", "did you mean 'optim.learning_rate'"),
        ("optim.epochs=many", "optim.epochs", "valid integer"),
        ("deepspeed.zero_stage=4", "deepspeed.zero_stage", "less than or equal to 3"),
        ("deepspeed.dtype=int8", "deepspeed.dtype", "bf16"),
        ("data.split=1,2", "data.split", "three shares"),
        ("data.split=0,0,0", "data.split", "positive sum"),
        ("lora.only_optimize_lora=true", "lora", "needs dim > 0"),
        ("deepspeed.offload=true", "deepspeed", "zero_stage >= 1"),
        ("nonsense=1", "nonsense", "unknown key"),
    ],
)
def test_errors_name_the_key(override, key, words):
    with pytest.raises(ConfigError) as e:
        load(SFTConfig, None, [*BASE, override])
    assert f"  {key}:" in str(e.value)
    assert words in str(e.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("lora.dim=true", "lora.dim"),  # was rank-1 LoRA
        ("deepspeed.zero_stage=true", "deepspeed.zero_stage"),  # was ZeRO-1
        ("optim.learning_rate=true", "optim.learning_rate"),
        ("optim.max_steps=false", "optim.max_steps"),
        ("model.dropout=false", "model.dropout"),
        ("data.split=[true, 1, 1]", "data.split"),
    ],
)
def test_booleans_are_never_read_as_numbers(override, key):
    with pytest.raises(ConfigError) as e:
        load(SFTConfig, None, [*BASE, override])
    assert f"  {key}: expected a number, not a boolean" in str(e.value)
    # real numbers and real booleans still load
    cfg = load(
        SFTConfig, None, [*BASE, "lora.dim=2", "deepspeed.zero_stage=1", "model.gradient_checkpointing=true"]
    )
    assert (cfg.lora.dim, cfg.deepspeed.zero_stage, cfg.model.gradient_checkpointing) == (2, 1, True)


def test_num_padding_at_beginning_still_loads_but_is_reported_as_deprecated():
    from rlhf.config.stages import deprecated_settings

    cfg = load(RewardConfig, None, [*BASE, "model.num_padding_at_beginning=1"])
    assert cfg.model.num_padding_at_beginning == 1
    (line,) = deprecated_settings(cfg)
    assert line.startswith("model.num_padding_at_beginning is deprecated and ignored")
    assert deprecated_settings(load(RewardConfig, None, BASE)) == []


def test_missing_required_fields_are_named():
    with pytest.raises(ConfigError) as e:
        load(RewardConfig, None, ["data.paths=[a]"])
    assert "model: Field required" in str(e.value)
    assert "checkpoint: Field required" in str(e.value)


def test_stage_data_requirements():
    with pytest.raises(ConfigError, match="reward share"):
        load(RewardConfig, None, [*BASE, "data.split=1,0,1"])
    with pytest.raises(ConfigError, match="sft_only_paths"):
        load(SFTConfig, None, [*BASE, "data.split=0,1,1"])
    assert load(SFTConfig, None, [*BASE, "data.split=0,1,1", "data.sft_only_paths=[s.jsonl]"])


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1", "optim.epochs.x=1"])
def test_malformed_overrides(bad):
    with pytest.raises(ConfigError):
        load(SFTConfig, None, [*BASE, bad])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(SFTConfig, tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load(SFTConfig, tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(SFTConfig, tmp_path / "broken.yaml")


def test_dump_round_trips(tmp_path):
    cfg = load(RewardConfig, None, [*BASE, "model.num_padding_at_beginning=1", "deepspeed.overrides={a: 1}"])
    f = tmp_path / "c.yaml"
    f.write_text(dump(cfg))
    assert load(RewardConfig, f) == cfg


def _is_part(annotation) -> bool:
    """Whether a field's type is a config part (a Section, optional or not)."""
    import typing

    from rlhf.config import Section

    args = typing.get_args(annotation) or (annotation,)
    return any(isinstance(a, type) and issubclass(a, Section) for a in args)


def test_no_option_declared_twice():
    """Every stage is composed from shared parts: a field name is declared in one class only."""
    from pydantic import BaseModel

    from rlhf.config import parts, ppo_parts, stages

    owners: dict[str, list[str]] = {}
    for module in (parts, ppo_parts, stages):
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == module.__name__:
                own = set(obj.__annotations__) - {"phase", "name", "tokenizer_section"}  # class constants
                for field in own:
                    if issubclass(obj, stages.StageConfig) and _is_part(obj.model_fields[field].annotation):
                        continue  # a stage composing a shared part (generation, evaluation, a model section)
                    owners.setdefault(field, []).append(obj.__name__)
    # Intended: LoRA has its own dropout and lr (lora.dropout, lora.learning_rate), which are
    # different options from model.dropout and optim.learning_rate.
    allowed = {"dropout": {"ModelConfig", "LoraConfig"}, "learning_rate": {"OptimizerConfig", "LoraConfig"}}
    dupes = {f: o for f, o in owners.items() if len(o) > 1 and set(o) != allowed.get(f)}
    assert not dupes, dupes


def test_config_import_does_not_import_torch():
    code = "import rlhf.config, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ds_config_shapes():
    cfg = load(
        SFTConfig,
        None,
        [
            *BASE,
            "deepspeed.zero_stage=3",
            "deepspeed.offload=true",
            "optim.gradient_accumulation_steps=4",
            "optim.per_device_train_batch_size=2",
            "deepspeed.overrides={zero_optimization: {overlap_comm: true}}",
        ],
    )
    ds = build_ds_config(cfg.deepspeed, cfg.optim, world_size=8)
    assert ds["train_batch_size"] == 2 * 4 * 8
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["overlap_comm"] is True
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["gradient_clipping"] == 1.0
    frozen = build_ds_config(cfg.deepspeed, cfg.optim, world_size=8, train=False)
    assert "offload_optimizer" not in frozen["zero_optimization"]
    assert frozen["gradient_accumulation_steps"] == 1


@pytest.mark.parametrize(
    "stage, offload, world_size, expected",
    [
        (2, False, 1, 0),  # nothing to shard on one rank: the same math without ZeRO's bookkeeping
        (1, False, 1, 0),
        (2, True, 1, 2),  # ZeRO-Offload on one device is the point of stage 2 there
        (3, False, 1, 3),
        (2, False, 2, 2),
        (0, False, 4, 0),
    ],
)
def test_zero_stage_on_one_rank(stage, offload, world_size, expected):
    cfg = load(
        SFTConfig, None, [*BASE, f"deepspeed.zero_stage={stage}", f"deepspeed.offload={str(offload).lower()}"]
    )
    assert (
        build_ds_config(cfg.deepspeed, cfg.optim, world_size=world_size)["zero_optimization"]["stage"]
        == expected
    )
    forced = cfg.deepspeed.model_copy(update={"overrides": {"zero_optimization": {"stage": stage}}})
    assert build_ds_config(forced, cfg.optim, world_size=world_size)["zero_optimization"]["stage"] == stage


def test_every_stage_registered():
    assert {"sft", "reward", "ppo", "dpo"} <= set(STAGES)
    assert [STAGES[s].phase for s in ("sft", "reward", "ppo", "dpo")] == [
        0,
        1,
        2,
        1,
    ]  # DPO trains on the RM's pairs
