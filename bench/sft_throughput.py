"""SFT tokens/s of our jitted nnx train step vs a plain PyTorch + transformers Llama step.

Same model (the demo guide's tiny Llama: tied embeddings, GQA, SwiGLU), same packed batches
from data/pipeline.py (segment-masked attention, per-segment positions, loss on strategy tokens),
same optimizer (AdamW + global-norm clipping), on this CPU, in one process. Rounds alternate
between the two so background load hits both alike; the median round counts.

    python bench/sft_throughput.py [--rounds 5] [--steps 5] [--batch 8] [--seq 256]

Last line: `sft_throughput: <ratio>x <ours tok/s> vs <torch tok/s>` (tokens = all batch slots).
"""

from __future__ import annotations

import argparse
import statistics
import sys
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
from exectune_jax.models.transformer import Transformer  # noqa: E402
from exectune_jax.sim import guide  # noqa: E402
from exectune_jax.train.optim import make_optimizer  # noqa: E402
from exectune_jax.train.sft import make_train_step  # noqa: E402

LR, WEIGHT_DECAY, CLIP = 3e-3, 0.01, 1.0


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


class Ours:
    """The step `exectune sft` runs, with the config's defaults for remat and the head chunk."""

    def __init__(self, mcfg):
        defaults = ModelConfig()
        model = Transformer(mcfg, rngs=nnx.Rngs(0), remat=defaults.remat)
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
    def __init__(self, mcfg):
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=mcfg.vocab_size, hidden_size=mcfg.hidden_size,
            intermediate_size=mcfg.intermediate_size, num_hidden_layers=mcfg.num_layers,
            num_attention_heads=mcfg.num_heads, num_key_value_heads=mcfg.num_kv_heads,
            head_dim=mcfg.head_dim, rms_norm_eps=mcfg.rms_norm_eps, tie_word_embeddings=True,
            max_position_embeddings=mcfg.max_position_embeddings, attn_implementation="sdpa",
        )
        self.model = LlamaForCausalLM(config).train()
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    data, mcfg = batches(args.batch, args.seq, args.steps)
    tokens = args.batch * args.seq * args.steps
    ours, ref = Ours(mcfg), Torch(mcfg)
    ours.run(data[:1])  # compile
    ref.run(data[:1])
    rates = {"ours": [], "torch": []}
    for r in range(args.rounds):
        rates["ours"].append(tokens / ours.run(data))
        rates["torch"].append(tokens / ref.run(data))
        print(f"round {r}: ours {rates['ours'][-1]:.0f} tok/s, "
              f"torch {rates['torch'][-1]:.0f} tok/s", flush=True)
    ours_rate, torch_rate = (statistics.median(rates[k]) for k in ("ours", "torch"))
    params = sum(p.numel() for p in ref.model.parameters())
    print(f"model: {params} params, batch {args.batch}x{args.seq}, {jax.device_count()} JAX "
          f"device(s), torch threads {torch.get_num_threads()}")
    print(f"sft_throughput: {ours_rate / torch_rate:.2f}x {ours_rate:.0f} vs {torch_rate:.0f}")


if __name__ == "__main__":
    main()
