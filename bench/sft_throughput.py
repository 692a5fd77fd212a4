"""SFT tokens/s of our jitted nnx train step vs a plain PyTorch + transformers Llama step.

Two shapes, same weights on both sides (random, written once by transformers as an HF
directory and read by both), fp32 on this CPU:
- `demo`: the demo guide's tiny Llama (tied embeddings, GQA, SwiGLU), 8 x 256 tokens a step;
- `smollm2`: SmolLM2-135M's shape (Llama, 30 layers, hidden 576, 9 query / 3 KV heads of 64,
  MLP 1536, vocabulary 49,152, tied; 135M parameters), 4 x 128 tokens a step.
Same packed batches from data/pipeline.py (segment-masked attention, per-segment positions,
loss on strategy tokens), same optimizer (AdamW + global-norm clipping), in one process. Rounds
alternate between the two so background load hits both alike; the median round counts.

    python bench/sft_throughput.py [--shape demo|smollm2|all] [--rounds N] [--steps N]
                                   [--batch N] [--seq N] [--profile DIR]

`--profile DIR` also traces our step (jax.profiler, into DIR) after the rounds and prints where
its time goes: each XLA operation's own time (time inside it, less the operations it runs),
summed by kind.

One line per shape: `sft_throughput/<shape>: <ratio>x <ours tok/s> vs <torch tok/s>` (tokens =
all batch slots).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

import jax  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from exectune_jax.config import ModelConfig  # noqa: E402
from exectune_jax.data import pipeline, tasks  # noqa: E402
from exectune_jax.gcop import prompts  # noqa: E402
from exectune_jax.models import architecture, hf  # noqa: E402
from exectune_jax.sim import guide  # noqa: E402
from exectune_jax.train.optim import make_optimizer  # noqa: E402
from exectune_jax.train.sft import make_train_step  # noqa: E402

LR, WEIGHT_DECAY, CLIP = 3e-3, 0.01, 1.0
SMOLLM2_135M = dict(model_type="llama", vocab_size=49152, hidden_size=576,
                    intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3,
                    head_dim=64, rope_theta=100000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=True, max_position_embeddings=8192)
"""SmolLM2-135M's config.json, as `architecture.ModelConfig` fields."""
SHAPES = {"demo": dict(batch=8, seq=256, steps=5, rounds=5),
          "smollm2": dict(batch=4, seq=128, steps=2, rounds=3)}
"""Per shape: the batch and the defaults of --steps and --rounds (the 135M step is heavy)."""


def batches(batch: int, seq: int, n: int):
    """`n` packed SFT batches of atomic strategies, and the model config of the demo guide."""
    problems = tasks.get("arith").problems("train")
    spec = guide.BaseGuideSpec()
    tokenizer = guide.train_tokenizer(guide.tokenizer_corpus(problems), spec.vocab_size)
    examples = [
        pipeline.encode_example(
            tokenizer, prompts.guide_messages(p, "math"), guide.gold_strategy(p), p.id
        )
        for p in problems
    ]
    examples = [e for e in examples if len(e.inputs) <= seq]
    it = pipeline.sft_iterator(examples, seq_len=seq, batch_size=batch, seed=0,
                               process_index=0, process_count=1)
    return [next(it) for _ in range(n)], guide.guide_model_config(tokenizer, spec)


def write_model(mcfg: architecture.ModelConfig, path: Path) -> None:
    """Random weights of `mcfg`'s shape as an HF directory, the only copy both sides read."""
    torch.manual_seed(0)
    fields = {k: v for k, v in mcfg.to_hf().items() if k != "architectures"}
    LlamaForCausalLM(LlamaConfig(**fields)).save_pretrained(path)


class Ours:
    """The step `exectune sft` runs, with the config's defaults for remat and the head chunk."""

    def __init__(self, path: Path):
        defaults = ModelConfig()
        model, _ = hf.load(path, remat=defaults.remat)
        opt = nnx.Optimizer(model, make_optimizer(LR, 10_000, 0, WEIGHT_DECAY, CLIP), wrt=nnx.Param)
        graphdef, self.state = nnx.split((model, opt))
        self.step = make_train_step(graphdef, head_chunk=defaults.head_chunk)

    def run(self, data) -> float:
        t = time.perf_counter()
        for b in data:
            self.state, stats = self.step(self.state, b)
        jax.block_until_ready(stats)
        return time.perf_counter() - t


class Torch:
    def __init__(self, path: Path):
        self.model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                      attn_implementation="sdpa").train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, betas=(0.9, 0.95),
                                     weight_decay=WEIGHT_DECAY)

    @staticmethod
    def tensors(b):
        seg = torch.from_numpy(b["segment_ids"])
        t = seg.shape[1]
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
        allowed = (seg[:, :, None] == seg[:, None, :]) & causal
        blocked = torch.finfo(torch.float32).min
        mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, blocked)
        as_long = {k: torch.from_numpy(b[k]).long() for k in ("tokens", "positions", "targets")}
        return (as_long["tokens"], as_long["positions"], mask[:, None], as_long["targets"],
                torch.from_numpy(b["loss_mask"]).float())

    def run(self, data) -> float:
        t = time.perf_counter()
        for b in data:
            tokens, positions, mask, targets, loss_mask = self.tensors(b)
            logits = self.model(input_ids=tokens, position_ids=positions,
                                attention_mask=mask).logits
            ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                                   reduction="none")
            loss = (ce * loss_mask.flatten()).sum() / loss_mask.sum().clamp(min=1)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
            self.opt.step()
        return time.perf_counter() - t


def measure(shape: str, args) -> str:
    """Both steps side by side at one shape; returns the shape's last line."""
    sizes = {**SHAPES[shape], **{k: v for k, v in vars(args).items()
                                 if k in SHAPES[shape] and v is not None}}
    batch, seq, steps = sizes["batch"], sizes["seq"], sizes["steps"]
    data, demo_cfg = batches(batch, seq, steps)
    mcfg = demo_cfg if shape == "demo" else architecture.ModelConfig(**SMOLLM2_135M)
    tokens = batch * seq * steps
    with tempfile.TemporaryDirectory() as tmp:
        write_model(mcfg, Path(tmp))
        ours, ref = Ours(Path(tmp)), Torch(Path(tmp))
    ours.run(data[:1])  # compile
    ref.run(data[:1])
    rates = {"ours": [], "torch": []}
    for r in range(sizes["rounds"]):
        rates["ours"].append(tokens / ours.run(data))
        rates["torch"].append(tokens / ref.run(data))
        print(f"{shape} round {r}: ours {rates['ours'][-1]:.0f} tok/s, "
              f"torch {rates['torch'][-1]:.0f} tok/s", flush=True)
    if args.profile:
        print(profile(ours, data, args.profile / shape))
    ours_rate, torch_rate = (statistics.median(rates[k]) for k in ("ours", "torch"))
    params = sum(p.numel() for p in ref.model.parameters())
    print(f"{shape} model: {params} params, batch {batch}x{seq}, {jax.device_count()} JAX "
          f"device(s), torch threads {torch.get_num_threads()}")
    return f"sft_throughput/{shape}: {ours_rate / torch_rate:.2f}x {ours_rate:.0f} vs {torch_rate:.0f}"


OP_KINDS = (  # (kind, prefixes of XLA:CPU's operation names), first match wins
    ("matmul", ("ynn_fusion", "dot", "convolution")),
    ("copy, transpose, slice", ("copy", "transpose", "bitcast", "slice", "dynamic",
                                "concatenate", "pad", "gather", "scatter")),
    ("reduce", ("reduce",)),
    ("other fusion", ("",)),
)


def op_kind(name: str) -> str:
    return next(kind for kind, prefixes in OP_KINDS if name.startswith(prefixes))


def self_times(events: list[dict]) -> collections.Counter:
    """Per event name, the time inside it less its children on the same thread (a while loop
    counts only its own bookkeeping); host-side Python and executor events are left out."""
    own: collections.Counter = collections.Counter()
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            by_thread[(e.get("pid"), e.get("tid"))].append(e)
    for spans in by_thread.values():
        spans.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[dict] = []
        for e in spans:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            if stack:
                own[stack[-1]["name"]] -= e["dur"]
            own[e["name"]] += e["dur"]
            stack.append(e)
    return collections.Counter({n: t for n, t in own.items()
                                if not n.startswith(("$", "ThunkExecutor", "Thunk"))})


def profile(ours: Ours, data, out: Path) -> str:
    """A jax.profiler trace of our step over `data`; returns its time by kind of operation."""
    jax.profiler.start_trace(str(out), create_perfetto_trace=True)
    ours.run(data)
    jax.profiler.stop_trace()
    trace = max(out.rglob("perfetto_trace.json.gz"), key=lambda f: f.stat().st_mtime)
    events = json.loads(gzip.decompress(trace.read_bytes()))
    own = self_times(events["traceEvents"] if isinstance(events, dict) else events)
    kinds: collections.Counter = collections.Counter()
    for name, t in own.items():
        kinds[op_kind(name)] += t
    total = sum(kinds.values())
    lines = [f"our step's operations, {total / 1e3 / len(data):.0f} ms a step (trace: {trace})"]
    lines += [f"  {kind}: {t / total:.0%}" for kind, t in kinds.most_common()]
    lines += [f"  top: {name} {t / total:.1%}" for name, t in own.most_common(8)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    ap.add_argument("--rounds", type=int, help="default: per shape (SHAPES)")
    ap.add_argument("--steps", type=int, help="default: per shape (SHAPES)")
    ap.add_argument("--batch", type=int, help="default: per shape (SHAPES)")
    ap.add_argument("--seq", type=int, help="default: per shape (SHAPES)")
    ap.add_argument("--profile", type=Path, help="also trace our step into this directory")
    args = ap.parse_args()
    lines = [measure(shape, args) for shape in (SHAPES if args.shape == "all" else [args.shape])]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
