"""Greedy decode tokens/s of our KV-cache sampler vs `transformers` `generate`, on this CPU.

Same model (a 3.3M-parameter Qwen3: vocabulary 2048, hidden 256, MLP 704, 4 layers, 8 query
heads over 2 KV heads of 32, tied embeddings, fp32, random weights written once as an HF
directory and read by both sides), same prompts (32 of 64 random tokens), 128 new tokens each
with no stop token, so both sides decode every token. Ours is `models.sampler.generate`
(jitted prefill, one jitted decode loop); the reference is `model.generate(do_sample=False)`
with its KV cache. Both must write the same tokens for most rows (fp32 near-ties may break
either way); the share of identical rows is printed. Rounds alternate between the two so
background load hits both alike; the median round counts; one process.

    python bench/decode_throughput.py [--rounds 3] [--batch 32] [--prompt-len 64] [--new 128]
                                      [--torch-threads N]

torch's intra-op threads default to its own choice (the cores); on a machine busy with other
work its spinning thread pool slows down far more than XLA's, so compare on an idle machine or
give `--torch-threads 1` beside the default.

Last line: `decode_throughput: <ratio>x <ours tok/s> vs <transformers tok/s>` (new tokens).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM  # noqa: E402

from exectune_jax.models import hf, sampler  # noqa: E402

CONFIG = dict(vocab_size=2048, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
              num_attention_heads=8, num_key_value_heads=2, head_dim=32,
              tie_word_embeddings=True, max_position_embeddings=1024, pad_token_id=0,
              bos_token_id=None, eos_token_id=None)
INIT_STD = 0.1
"""Weights drawn wider than HF's 0.02 so greedy logits have clear winners, not near-ties."""


def write_model(path: Path) -> None:
    """Random Qwen3 weights as an HF directory (the bench's only copy of them)."""
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**CONFIG, initializer_range=INIT_STD))
    model.save_pretrained(path)


class Ours:
    def __init__(self, path: Path):
        self.model, _ = hf.load(path)

    def run(self, prompts, new: int) -> tuple[float, np.ndarray]:
        t = time.perf_counter()
        out = sampler.generate(self.model, prompts, max_new_tokens=new, temperature=0.0,
                               stop_token_ids=())
        return time.perf_counter() - t, np.array(out.tokens)


class Reference:
    def __init__(self, path: Path):
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def run(self, prompts, new: int) -> tuple[float, np.ndarray]:
        ids = torch.tensor(prompts, dtype=torch.long)
        t = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
        return time.perf_counter() - t, out[:, ids.shape[1]:].numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    rng = np.random.default_rng(0)
    prompts = rng.integers(2, CONFIG["vocab_size"], (args.batch, args.prompt_len)).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        write_model(Path(tmp))
        ours, ref = Ours(Path(tmp)), Reference(Path(tmp))
    ours.run(prompts, args.new)  # compile
    ref.run(prompts[:2], 2)
    tokens = args.batch * args.new
    rates = {"ours": [], "transformers": []}
    for r in range(args.rounds):
        seconds, ours_tokens = ours.run(prompts, args.new)
        rates["ours"].append(tokens / seconds)
        seconds, ref_tokens = ref.run(prompts, args.new)
        rates["transformers"].append(tokens / seconds)
        print(f"round {r}: ours {rates['ours'][-1]:.0f} tok/s, "
              f"transformers {rates['transformers'][-1]:.0f} tok/s", flush=True)
    same = np.mean(np.all(ours_tokens == ref_tokens, axis=1))
    first = np.mean(ours_tokens[:, 0] == ref_tokens[:, 0])
    params = sum(p.numel() for p in ref.model.parameters())
    print(f"model: {params} params, {args.batch} prompts x {args.prompt_len} -> +{args.new}, "
          f"{jax.device_count()} JAX device(s), torch threads {torch.get_num_threads()}")
    print(f"same greedy tokens: {same:.0%} of rows identical, first token {first:.0%}")
    ours_rate, ref_rate = (statistics.median(rates[k]) for k in ("ours", "transformers"))
    print(f"decode_throughput: {ours_rate / ref_rate:.2f}x {ours_rate:.0f} vs {ref_rate:.0f}")


if __name__ == "__main__":
    main()
