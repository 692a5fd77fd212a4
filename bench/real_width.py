"""A Qwen3-0.6B-shaped guide through the normal commands on this CPU: 2 SFT steps, 1 GRPO step.

    python bench/real_width.py [--out DIR] [--layers 28]

The guide has Qwen3-0.6B's architecture and width (28 layers, hidden 1024, 16 / 8 heads of 128,
MLP 3072, the 151,936-token vocabulary, tied embeddings) with random weights, written as an HF
directory by this script next to the demo tokenizer; the task is the offline arith world and
the core model the embedded sim. Each phase is one `exectune` process, so its peak resident
memory is its own (os.wait4). The last line is
`real_width: <GRPO step s / SFT s>x <GRPO s> vs <SFT s>`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QWEN3_0_6B = dict(model_type="qwen3", vocab_size=151936, hidden_size=1024,
                  intermediate_size=3072, num_layers=28, num_heads=16, num_kv_heads=8,
                  head_dim=128, rope_theta=1000000.0, tie_word_embeddings=True,
                  max_position_embeddings=40960)
TASK = "task.options={n_train: 64, n_validation: 8, n_test: 8}"


def build_guide(out: Path, layers: int) -> Path:
    """Random Qwen3-0.6B-shaped weights plus the demo tokenizer, as an HF directory."""
    from flax import nnx

    from exectune_jax.data import tasks
    from exectune_jax.models import hf
    from exectune_jax.models.architecture import ModelConfig
    from exectune_jax.models.transformer import Transformer
    from exectune_jax.sim.guide import tokenizer_corpus, train_tokenizer

    problems = tasks.get("arith", n_train=64, n_validation=8, n_test=8).problems("train")
    tokenizer = train_tokenizer(tokenizer_corpus(problems, "math"), 1024)
    cfg = ModelConfig(**{**QWEN3_0_6B, "num_layers": layers},
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    n_params = sum(x.size for x in __import__("jax").tree.leaves(nnx.state(model, nnx.Param)))
    hf.save(model, cfg, out / "guide", tokenizer=tokenizer)
    accepted = out / "accepted.jsonl"
    write_accepted(accepted, problems)
    print(f"guide: Qwen3-0.6B shape, {layers} layers, {n_params / 1e6:.0f}M parameters",
          flush=True)
    return accepted


def write_accepted(path: Path, problems) -> None:
    """Teacher strategies (the sim's gold ones) in the acceptance stage's row schema."""
    from exectune_jax.gcop import prompts
    from exectune_jax.sim import guide

    with path.open("w") as f:
        for p in problems:
            f.write(json.dumps({"id": p.id, "messages": prompts.guide_messages(p, "math"),
                                "completion": guide.gold_strategy(p), "style": "atomic",
                                "attempt": 0, "revision": 0}) + "\n")


def phase(name: str, args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS GiB) of one `exectune` command run as its own process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "exectune_jax.cli", *args])
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"real_width: `exectune {args[0]}` failed ({name})")
    rss = usage.ru_maxrss / 2**20  # KiB on Linux
    print(f"{name:<24} {seconds:8.1f} s   peak RSS {rss:6.2f} GiB", flush=True)
    return seconds, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="working directory (default: a temporary one)")
    parser.add_argument("--layers", type=int, default=28, help="fewer for a quick check")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        accepted = build_guide(out, args.layers)
        print(f"{'build + save guide':<24} {time.perf_counter() - start:8.1f} s", flush=True)
        common = [f"run_dir={out / 'run'}", TASK, "metrics.progress=false", "mesh.fsdp=1",
                  "model.max_seq_len=192"]
        sft_s, _ = phase("sft: 2 steps", [
            "sft", *common, f"model.path={out / 'guide'}", f"sft.data={accepted}",
            "sft.steps=2", "sft.batch_size=2", "sft.seq_len=192", "sft.held_out=0.0",
            "sft.eval_every=0", "sft.checkpoint_every=0"])
        rl_s, _ = phase("rl: 1 GRPO step", [
            "rl", *common, f"model.path={out / 'guide'}",
            f"rl.init={out / 'run' / 'sft' / 'guide'}", "rl.preset=exectune",
            "rl.core_only_samples=1", "rl.steps=1", "rl.prompts_per_step=2", "rl.group_size=4",
            "rl.micro_batch=4", "rl.max_new_tokens=64", "rl.held_out=0",
            "rl.checkpoint_every=1"])
    print(f"real_width: {rl_s / sft_s:.2f}x {rl_s:.1f} s vs {sft_s:.1f} s "
          "(GRPO step vs 2 SFT steps)")


if __name__ == "__main__":
    main()
