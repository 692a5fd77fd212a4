"""Accelerator check: MFU of a Qwen3-1.7B-shaped SFT step and sampler decode throughput.

    python bench/gpu_check.py            # on a GPU/TPU host: the Qwen3-1.7B shape
    python bench/gpu_check.py --tiny     # a smoke run of the same code on CPU

Each part is measured side by side with the PyTorch + transformers reference on the same shapes
in the same run: our jitted SFT train step (bf16 compute, fp32 params, AdamW) against a torch
train step (bf16 autocast, fp32 params, AdamW), and our KV-cache sampler against
`transformers` `generate` (greedy, bf16). MFU counts 6·N·tokens plus the attention matmuls
(12·layers·heads·head_dim·T per token) against the chip's dense bf16 peak.
Each framework runs in its own subprocess. Results go to stdout and, when $OUT is set, to
$OUT/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exectune_jax.models import sampler
from exectune_jax.models.transformer import ModelConfig, Transformer
from exectune_jax.train.optim import make_optimizer
from exectune_jax.train.sft import make_train_step

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v5 lite": 197e12,
                   "TPU v5": 459e12, "TPU v4": 275e12}

QWEN3_1_7B = dict(model_type="qwen3", vocab_size=151936, hidden_size=2048,
                  intermediate_size=6144, num_layers=28, num_heads=16, num_kv_heads=8,
                  head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  max_position_embeddings=40960, eos_token_id=151645, pad_token_id=151643)
TINY = dict(QWEN3_1_7B, vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
            num_heads=4, num_kv_heads=2, head_dim=16, eos_token_id=1, pad_token_id=0)


def peak_flops() -> float | None:
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_BF16_FLOPS.items():
        if name in kind:
            return flops
    return None


def n_params(cfg: ModelConfig) -> int:
    attn = cfg.hidden_size * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    mlp = 3 * cfg.hidden_size * cfg.intermediate_size
    return cfg.num_layers * (attn + mlp) + cfg.vocab_size * cfg.hidden_size


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return 6 * n_params(cfg) + attention


def timed(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def jax_sft(cfg: ModelConfig, batch: int, seq_len: int, iters: int) -> dict:
    model = Transformer(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.float32)
    opt = nnx.Optimizer(model, make_optimizer(1e-5, 1000, 10, 0.01, 1.0), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))
    step = make_train_step(graphdef)
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, cfg.vocab_size, (batch, seq_len), dtype=np.int32)
    b = {
        "tokens": jnp.asarray(tokens),
        "positions": jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len)),
        "segment_ids": jnp.ones((batch, seq_len), jnp.int32),
        "targets": jnp.asarray(np.roll(tokens, -1, axis=1)),
        "loss_mask": jnp.ones((batch, seq_len), jnp.float32),
    }
    holder = {"state": state}
    t0 = time.perf_counter()
    holder["state"], stats = step(holder["state"], b)
    jax.block_until_ready(stats)
    compile_s = time.perf_counter() - t0

    def one():
        holder["state"], s = step(holder["state"], b)
        jax.block_until_ready(s["loss"])

    seconds = timed(one, 1, iters)
    del holder
    return {"step_s": seconds, "tokens_per_s": batch * seq_len / seconds, "compile_s": compile_s}


def torch_qwen3(cfg: ModelConfig):
    """(torch, the same architecture as a transformers model on the best device, device)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf_cfg = Qwen3Config(**{k: v for k, v in cfg.to_hf().items() if k != "architectures"})
    hf_cfg._attn_implementation = "sdpa"
    return torch, Qwen3ForCausalLM(hf_cfg).to(device), device


def torch_sft(cfg: ModelConfig, batch: int, seq_len: int, iters: int) -> dict:
    torch, model, device = torch_qwen3(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01, fused=device == "cuda")
    ids = torch.randint(2, cfg.vocab_size, (batch, seq_len), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16)

    def one():
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = timed(one, 2, iters)
    del model, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"step_s": seconds, "tokens_per_s": batch * seq_len / seconds}


def jax_decode(cfg: ModelConfig, batch: int, prompt_len: int, new: int) -> dict:
    model = Transformer(cfg, rngs=nnx.Rngs(1), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(2, cfg.vocab_size, prompt_len)) for _ in range(batch)]

    def one():
        sampler.generate(model, prompts, max_new_tokens=new, temperature=0.0, stop_token_ids=())

    t0 = time.perf_counter()
    one()
    compile_s = time.perf_counter() - t0
    seconds = timed(one, 0, 2)
    return {"s": seconds, "new_tokens_per_s": batch * new / seconds, "compile_s": compile_s}


def torch_decode(cfg: ModelConfig, batch: int, prompt_len: int, new: int) -> dict:
    torch, model, device = torch_qwen3(cfg)
    model = model.to(dtype=torch.bfloat16).eval()
    ids = torch.randint(2, cfg.vocab_size, (batch, prompt_len), device=device)

    def one():
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=0)
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = timed(one, 1, 2)
    del model
    return {"s": seconds, "new_tokens_per_s": batch * new / seconds}


def measure(part: str, args, cfg: ModelConfig) -> dict:
    """One framework's numbers; each framework runs in its own process so neither holds the
    other's device memory (JAX's allocator keeps what it has grown to)."""
    if part == "jax":
        sft = jax_sft(cfg, args.batch, args.seq_len, args.iters)
        peak = peak_flops()
        flops = train_flops_per_token(cfg, args.seq_len) * sft["tokens_per_s"]
        sft["tflops"] = flops / 1e12
        sft["mfu"] = flops / peak if peak else None
        return {"device": jax.devices()[0].device_kind, "sft": sft,
                "decode": jax_decode(cfg, args.decode_batch, args.prompt_len, args.new_tokens)}
    return {"sft": torch_sft(cfg, args.batch, args.seq_len, args.iters),
            "decode": torch_decode(cfg, args.decode_batch, args.prompt_len, args.new_tokens)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke run)")
    ap.add_argument("--part", choices=["jax", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--decode-batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    args, _ = ap.parse_known_args()
    cfg = ModelConfig(**(TINY if args.tiny else QWEN3_1_7B))
    if args.tiny:
        args.batch, args.seq_len, args.iters = 2, 64, 2
        args.decode_batch, args.prompt_len, args.new_tokens = 4, 16, 16
    if args.part:
        print(json.dumps(measure(args.part, args, cfg)), flush=True)
        return
    report: dict = {"params": n_params(cfg), "shape": vars(args)}
    for part in ("torch", "jax"):
        proc = subprocess.run([sys.executable, __file__, "--part", part, *sys.argv[1:]],
                              capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        report[part] = json.loads(lines[-1]) if lines else {"error": proc.stderr[-3000:]}
        print(json.dumps({part: report[part]}), flush=True)
        if os.environ.get("OUT"):
            with open(os.path.join(os.environ["OUT"], "gpu_check.json"), "w") as f:
                json.dump(report, f, indent=1)
    ours, ref = report["jax"], report["torch"]
    if ours.get("sft") and ref.get("sft"):
        r = ours["sft"]["tokens_per_s"] / ref["sft"]["tokens_per_s"]
        print(f"sft_step: {r:.2f}x {ours['sft']['tokens_per_s']:.0f} vs "
              f"{ref['sft']['tokens_per_s']:.0f} tokens/s (our MFU {ours['sft']['mfu'] or 0:.3f})")
    if ours.get("decode") and ref.get("decode"):
        d, t = ours["decode"]["new_tokens_per_s"], ref["decode"]["new_tokens_per_s"]
        print(f"gpu_check: {d / t:.2f}x {d:.0f} vs {t:.0f} decode new tokens/s")


if __name__ == "__main__":
    main()
