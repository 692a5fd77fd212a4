import json

import pytest

from exectune_jax.config import load_config
from exectune_jax.train import plan

TINY_HF = {
    "model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 256, "eos_token_id": 1, "pad_token_id": 0,
}


def test_accelerator_names_give_devices_and_memory():
    v5e = plan.parse_accelerator("tpu-v5e-8")
    assert (v5e.devices, v5e.bytes_per_device, v5e.platform) == (8, 16 * plan.GIB, "tpu")
    assert plan.parse_accelerator("tpu-v5p-16").devices == 8  # v5p counts TensorCores
    h100 = plan.parse_accelerator("8xh100")
    assert (h100.devices, h100.bytes_per_device) == (8, 80 * plan.GIB)
    with pytest.raises(plan.PlanError, match="tpu-v5e-8"):
        plan.parse_accelerator("tpu-v9z-3")


def test_unknown_model_path_names_the_field(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}", f"model.path={tmp_path / 'nowhere'}"])
    with pytest.raises(plan.PlanError, match="model.path"):
        plan.model_config(cfg)


def tiny_plan_config(tmp_path, *extra: str):
    """The RL config of a tiny guide whose directory holds only its config.json."""
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY_HF))
    return load_config(None, [
        f"run_dir={tmp_path}", f"model.path={model}", "model.max_seq_len=64",
        "rl.max_new_tokens=16", "rl.prompts_per_step=2", "rl.group_size=4", "rl.micro_batch=8",
        *extra,
    ])


def test_tiny_plan_compiles_every_program_and_fits(tmp_path, capsys):
    cfg = tiny_plan_config(tmp_path)
    assert plan.run(cfg, "tpu-v5e-8") == 0
    out = capsys.readouterr().out
    assert "fsdp=8" in out and "fits" in out
    saved = json.loads((tmp_path / "plan.json").read_text())
    names = [p["name"] for p in saved["programs"]]
    assert names == ["sample: prefill", "sample: decode", "reference log-probs", "GRPO update", "SFT step"]
    assert all(p["total"] > 0 for p in saved["programs"]) and saved["fits"]
    # SFT is its own stage: its step takes the whole (model, optimizer) state, nothing beside it
    sft = saved["programs"][-1]
    assert sft["arguments"] >= saved["resident"]["policy"] + saved["resident"]["optimizer"]
    assert sft["other_resident"] == 0
    # fsdp=8: each device holds an eighth of every matrix; the 5 norm scales are replicated
    matrices = 2 * 256 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128)
    assert saved["resident"]["policy"] == 4 * (matrices // 8 + 5 * 64)
    assert saved["resident"]["optimizer"] >= 2 * saved["resident"]["policy"]  # Adam mu, nu


def test_a_mesh_that_cannot_hold_the_state_names_what_does_not_fit(tmp_path):
    cfg = load_config("configs/tpu-v5e-8.yaml", [
        f"run_dir={tmp_path}", "model.path=Qwen/Qwen3-1.7B", "mesh.fsdp=1", "mesh.data=8",
    ])
    with pytest.raises(plan.PlanError) as err:
        plan.run(cfg, "tpu-v5e-8")
    message = str(err.value)
    assert "tpu-v5e-8" in message and "optimizer" in message and "mesh.fsdp" in message


@pytest.mark.slow
def test_qwen3_1_7b_gsm8k_rl_fits_tpu_v5e_8(tmp_path, capsys):
    """G = 8, 16 prompts, 512 new tokens, sharded over fsdp = 8: within 16 GiB per chip."""
    cfg = load_config(["configs/gsm8k-qwen3-1.7b.yaml", "configs/tpu-v5e-8.yaml"],
                      [f"run_dir={tmp_path}"])
    assert plan.known_architecture(cfg.model.path) is not None  # checkpoint not downloaded
    assert (cfg.rl.group_size, cfg.rl.prompts_per_step, cfg.rl.max_new_tokens) == (8, 16, 512)
    assert plan.run(cfg, "tpu-v5e-8") == 0
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert max(p["total"] for p in saved["programs"]) <= plan.HEADROOM * 16 * plan.GIB


def test_lora_plan_holds_optimizer_state_for_the_adapters_only_and_no_reference(tmp_path):
    cfg = tiny_plan_config(tmp_path, "model.lora.rank=4")
    assert plan.run(cfg, "1xh100") == 0
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert [p["name"] for p in saved["programs"]] == [
        "sample: prefill", "sample: decode", "reference log-probs", "GRPO update", "SFT step"]
    # rank 4 on q, k, v, o (64->64, 64->32, 64->32, 64->64) and gate, up, down (64<->128)
    adapter_bytes = 4 * 2 * 4 * (64 + 64 + 64 + 32 + 64 + 32 + 64 + 64 + 3 * (64 + 128))
    resident = saved["resident"]
    assert resident["reference"] == 0
    assert 2 * adapter_bytes <= resident["optimizer"] <= 2 * adapter_bytes + 64  # Adam mu, nu
    base = 4 * (2 * 256 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) + 5 * 64)
    assert resident["policy"] == base + adapter_bytes
