"""Accelerator check: MFU of a Qwen3-1.7B-shaped SFT step, one GRPO step and decode throughput.

    python bench/gpu_check.py            # on a GPU/TPU host: the Qwen3-1.7B shape
    python bench/gpu_check.py --tiny     # a smoke run of the same code on CPU

Each part is measured side by side with the PyTorch + transformers reference on the same shapes
in the same run: our jitted SFT train step (bf16 compute, fp32 params, AdamW) against a torch
train step (bf16 autocast, fp32 params, AdamW), and our KV-cache sampler against
`transformers` `generate` (greedy, bf16). MFU counts 6·N·tokens plus the attention matmuls
(12·layers·heads·head_dim·T per token) against the chip's dense bf16 peak.

The GRPO step is the RL stage's own: the learner `grpo.build_learner` makes from an HF
directory (written here from random weights), G sampled completions for each of P prompts from
its bf16 sampling model, the frozen reference's log-probs (`rl_step.make_logprob_fn`) and one
update (`rl_step.make_train_step`: clipped ratio, k3 KL, micro-batches, AdamW), each phase
timed; no stop token, so every completion has the full length on both sides. The update's MFU
counts every token of its [P·G, prompt + new] batch like the SFT step; the log-prob pass is a
third of that (2·N·tokens plus the forward attention). The reference step is in
gpu_check_torch.py.

Each framework and workload runs in its own subprocess (with --tiny, all in this one), all of
them within `--budget-s` (480 s by default: a part still running when it runs out is stopped and
recorded as an error).
Results go to stdout and, as one JSON, to `--out` (default bench/results/gpu_check.json; with
--tiny, bench/results/gpu_check_tiny.json). A missing package (or, for the full shape, a JAX
without a GPU/TPU plugin) stops the check before anything runs, with one line naming it.
"""

from __future__ import annotations

import importlib.util
import sys

NEEDED = {"jax": "jax", "flax": "flax", "optax": "optax", "torch": "torch",
          "transformers": "transformers", "safetensors": "safetensors"}
"""Module -> the package that provides it."""
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu")
"""JAX runs on a GPU or TPU only with one of these (jax[cuda12], jax[cuda13], jax[tpu])."""


def missing_package(tiny: bool) -> str | None:
    """One line naming what this machine lacks for the check, or None; imports nothing."""
    for module, package in NEEDED.items():
        if importlib.util.find_spec(module) is None:
            return f"gpu_check: missing package {package!r}; install it (pip install {package})"
    if not tiny and not any(importlib.util.find_spec(p) for p in ACCELERATOR_PLUGINS):
        return ("gpu_check: missing package 'jax[cuda12]' (or jax[cuda13] / jax[tpu]): JAX has "
                "no GPU or TPU plugin here; use --tiny for a CPU smoke run")
    return None


if __name__ == "__main__" and (problem := missing_package("--tiny" in sys.argv)):
    sys.exit(problem)

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import gpu_check_torch as reference  # noqa: E402
from exectune_jax import config, io, parallel  # noqa: E402
from exectune_jax.models import hf, sampler  # noqa: E402
from exectune_jax.models.architecture import ModelConfig  # noqa: E402
from exectune_jax.models.transformer import Transformer  # noqa: E402
from exectune_jax.train import grpo, rl_step  # noqa: E402
from exectune_jax.train.advantages import group_advantages  # noqa: E402
from exectune_jax.train.optim import make_optimizer  # noqa: E402
from exectune_jax.train.sft import make_train_step  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

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

    seconds = reference.timed(one, 1, iters)
    del holder
    return {"step_s": seconds, "tokens_per_s": batch * seq_len / seconds, "compile_s": compile_s}


def jax_decode(cfg: ModelConfig, batch: int, prompt_len: int, new: int) -> dict:
    model = Transformer(cfg, rngs=nnx.Rngs(1), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(2, cfg.vocab_size, prompt_len)) for _ in range(batch)]

    def one():
        sampler.generate(model, prompts, max_new_tokens=new, temperature=0.0, stop_token_ids=())

    t0 = time.perf_counter()
    one()
    compile_s = time.perf_counter() - t0
    seconds = reference.timed(one, 0, 2)
    return {"s": seconds, "new_tokens_per_s": batch * new / seconds, "compile_s": compile_s}


def jax_grpo(cfg: ModelConfig, args) -> dict:
    """Seconds of each phase of one GRPO step (mean of `args.rl_iters` after one warm-up)."""
    p, g, new = args.rl_prompts, args.group, args.rl_new
    run = config.Config(
        model=config.ModelConfig(dtype="bfloat16", param_dtype="float32",
                                 max_seq_len=args.rl_prompt_len + new),
        rl=config.RlConfig(prompts_per_step=p, group_size=g, micro_batch=args.micro,
                           max_new_tokens=new, lr=1e-6),
    )
    mesh = parallel.make_mesh(1, -1, 1)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save(Transformer(cfg, rngs=nnx.Rngs(2), param_dtype=jnp.bfloat16), cfg, tmp)
        learner, _ = grpo.build_learner(run, Path(tmp), mesh)
    rng = np.random.default_rng(2)
    prompts = [list(rng.integers(2, cfg.vocab_size, args.rl_prompt_len)) for _ in range(p)]
    rows = [prompt for prompt in prompts for _ in range(g)]
    adv = group_advantages(rng.random((p, g)), np.ones((p, g), bool)).reshape(-1)
    shardings = rl_step.batch_shardings(mesh, learner.layout)

    def step(i: int) -> dict:
        t0 = time.perf_counter()
        out = sampler.generate(learner.sampling_model(), rows, max_new_tokens=new,
                               temperature=run.rl.temperature, stop_token_ids=(),
                               rng=jax.random.key(i))
        t1 = time.perf_counter()
        host = rl_step.build_batch(rows, out.tokens, out.logprobs, adv, np.ones(p * g, bool),
                                   learner.layout, learner.pad_id)
        batch = {k: jax.device_put(v, shardings[k]) for k, v in host.items()}
        with parallel.use_mesh(mesh):
            ref_logp = jax.block_until_ready(learner.logprob_fn(learner.reference, batch))
            t2 = time.perf_counter()
            learner.params, learner.opt_state, stats = learner.train_step(
                learner.params, learner.opt_state, batch, ref_logp)
            jax.block_until_ready(stats)
        return {"sample_s": t1 - t0, "logprob_s": t2 - t1, "update_s": time.perf_counter() - t2}

    t0 = time.perf_counter()
    step(0)
    first_s = time.perf_counter() - t0
    runs = [step(i + 1) for i in range(args.rl_iters)]
    result = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
    tokens = p * g * (args.rl_prompt_len + new)
    flops = train_flops_per_token(cfg, args.rl_prompt_len + new) * tokens
    peak = peak_flops()
    result.update(first_step_s=first_s, update_tokens=tokens,
                  update_mfu=flops / result["update_s"] / peak if peak else None,
                  logprob_mfu=flops / 3 / result["logprob_s"] / peak if peak else None)
    return result


PARTS = ("torch", "jax", "torch_rl", "jax_rl")


def measure_here(part: str, args, cfg: ModelConfig) -> dict:
    """One part in this process (tiny shapes on CPU: no device memory to hand back, and no
    interpreter start per part); an exception becomes the part's error."""
    try:
        return measure(part, args, cfg)
    except Exception as e:  # noqa: BLE001 - the report records any part's failure
        return {"error": f"{type(e).__name__}: {e}"}


def run_part(part: str, deadline: float) -> dict:
    """One part in its own process, stopped at the deadline; its JSON line, or an error."""
    left = deadline - time.monotonic()
    if left <= 0:
        return {"error": "not run: the time budget was spent"}
    try:
        proc = subprocess.run([sys.executable, __file__, "--part", part, *sys.argv[1:]],
                              capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {left:.0f} s: the time budget ran out"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": proc.stderr[-3000:]}



def measure(part: str, args, cfg: ModelConfig) -> dict:
    """One framework's numbers for one workload group; each runs in its own process so none
    holds another's device memory (JAX's allocator keeps what it has grown to)."""
    rl = dict(prompts=args.rl_prompts, group=args.group, prompt_len=args.rl_prompt_len,
              new=args.rl_new, micro=args.micro, iters=args.rl_iters)
    if part == "jax":
        sft = jax_sft(cfg, args.batch, args.seq_len, args.iters)
        peak = peak_flops()
        flops = train_flops_per_token(cfg, args.seq_len) * sft["tokens_per_s"]
        sft["tflops"] = flops / 1e12
        sft["mfu"] = flops / peak if peak else None
        return {"device": jax.devices()[0].device_kind, "sft": sft,
                "decode": jax_decode(cfg, args.decode_batch, args.prompt_len, args.new_tokens)}
    if part == "jax_rl":
        return {"device": jax.devices()[0].device_kind, "grpo": jax_grpo(cfg, args)}
    if part == "torch_rl":
        rl_cfg = config.RlConfig()
        return {"grpo": reference.grpo(cfg, **rl, clip_eps=rl_cfg.clip_eps, beta=rl_cfg.beta,
                                       lr=1e-6)}
    return {"sft": reference.sft(cfg, args.batch, args.seq_len, args.iters),
            "decode": reference.decode(cfg, args.decode_batch, args.prompt_len, args.new_tokens)}


def grpo_line(ours: dict, ref: dict, args) -> str:
    phases = (("sample", "sample_s"), ("log-probs", "logprob_s"), ("update", "update_s"))
    ours_s, ref_s = (sum(d[k] for _, k in phases) for d in (ours, ref))
    each = ", ".join(f"{name} {ours[k]:.2f} vs {ref[k]:.2f} s" for name, k in phases)
    return (f"grpo_step: {ref_s / ours_s:.2f}x {ours_s:.2f} vs {ref_s:.2f} s per step of "
            f"{args.rl_prompts}x{args.group} completions ({each}; our update MFU "
            f"{ours['update_mfu'] or 0:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke run)")
    ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--decode-batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--rl-prompts", type=int, default=16, help="GRPO: prompts per step (P)")
    ap.add_argument("--group", type=int, default=8, help="GRPO: completions per prompt (G)")
    ap.add_argument("--rl-prompt-len", type=int, default=128)
    ap.add_argument("--rl-new", type=int, default=384, help="GRPO: tokens per completion")
    ap.add_argument("--micro", type=int, default=16, help="GRPO: rows per micro-batch")
    ap.add_argument("--rl-iters", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=480,
                    help="wall seconds for all parts together")
    ap.add_argument("--out", type=Path, help="the JSON report (default: under bench/results/)")
    args, _ = ap.parse_known_args()
    cfg = ModelConfig(**(TINY if args.tiny else QWEN3_1_7B))
    if args.tiny:
        args.batch, args.seq_len, args.iters = 2, 64, 2
        args.decode_batch, args.prompt_len, args.new_tokens = 4, 16, 16
        args.rl_prompts, args.group, args.rl_prompt_len, args.rl_new = 2, 4, 16, 16
        args.micro, args.rl_iters = 4, 1
    if args.part:
        print(json.dumps(measure(args.part, args, cfg)), flush=True)
        return
    out = args.out or RESULTS / ("gpu_check_tiny.json" if args.tiny else "gpu_check.json")
    report: dict = {"params": n_params(cfg),
                    "shape": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    deadline = time.monotonic() + args.budget_s
    for part in PARTS:
        report[part] = measure_here(part, args, cfg) if args.tiny else run_part(part, deadline)
        print(json.dumps({part: report[part]}), flush=True)
        io.write_json_atomic(out, report)
    ours, ref = report["jax"], report["torch"]
    if ours.get("sft") and ref.get("sft"):
        r = ours["sft"]["tokens_per_s"] / ref["sft"]["tokens_per_s"]
        print(f"sft_step: {r:.2f}x {ours['sft']['tokens_per_s']:.0f} vs "
              f"{ref['sft']['tokens_per_s']:.0f} tokens/s (our MFU {ours['sft']['mfu'] or 0:.3f})")
    if report["jax_rl"].get("grpo") and report["torch_rl"].get("grpo"):
        print(grpo_line(report["jax_rl"]["grpo"], report["torch_rl"]["grpo"], args))
    if ours.get("decode") and ref.get("decode"):
        d, t = ours["decode"]["new_tokens_per_s"], ref["decode"]["new_tokens_per_s"]
        print(f"gpu_check: {d / t:.2f}x {d:.0f} vs {t:.0f} decode new tokens/s")


if __name__ == "__main__":
    main()
