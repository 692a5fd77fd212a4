"""Greedy decode tokens/s of our KV-cache sampler vs `transformers` `generate`, on this CPU.

Two shapes, fp32, random weights written once as an HF directory and read by both sides:
- `qwen3-3m`: a 3.3M-parameter Qwen3 (vocabulary 2048, hidden 256, MLP 704, 4 layers, 8 query
  heads over 2 KV heads of 32, tied), 32 prompts of 64 random tokens, 128 new tokens each;
- `smollm2`: SmolLM2-135M's shape (Llama, 30 layers, hidden 576, 9 query / 3 KV heads of 64,
  MLP 1536, vocabulary 49,152, tied; 135M parameters), 8 prompts of 32 tokens, 32 new each.
No stop token, so both sides decode every token. Ours is `models.sampler.generate` (jitted
prefill, one jitted decode loop); the reference is `model.generate(do_sample=False)` with its
KV cache. Both must write the same tokens: the share of identical rows is printed, and a shape
where a row differs says so on its last line. Rounds alternate between the two so background
load hits both alike; the median round counts; one process.

    python bench/decode_throughput.py [--shape qwen3-3m|smollm2|all] [--rounds N] [--batch N]
                                      [--prompt-len N] [--new N] [--torch-threads N]

torch's intra-op threads default to its own choice (the cores); on a machine busy with other
work its spinning thread pool slows down far more than XLA's, so compare on an idle machine or
give `--torch-threads 1` beside the default.

One line per shape: `decode_throughput/<shape>: <ratio>x <ours tok/s> vs <transformers tok/s>`
(new tokens).
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
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from exectune_jax.models import hf, sampler  # noqa: E402

SHAPES = {
    "qwen3-3m": dict(
        model=(Qwen3ForCausalLM, Qwen3Config),
        config=dict(vocab_size=2048, hidden_size=256, intermediate_size=704,
                    num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                    head_dim=32, tie_word_embeddings=True, max_position_embeddings=1024),
        init_std=0.1, batch=32, prompt_len=64, new=128, rounds=3),
    "smollm2": dict(
        model=(LlamaForCausalLM, LlamaConfig),
        config=dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    head_dim=64, tie_word_embeddings=True, max_position_embeddings=8192,
                    rope_theta=100000.0, rms_norm_eps=1e-5),
        init_std=0.02, batch=8, prompt_len=32, new=32, rounds=3),
}
"""Each shape's HF config, weight scale and default sizes. The 3.3M model's weights are drawn
wider than HF's 0.02 so greedy logits have clear winners, not near-ties; at 135M parameters
HF's own 0.02 already gives every row the same tokens on both sides."""


def write_model(shape: dict, path: Path) -> None:
    """Random weights as an HF directory (the bench's only copy of them)."""
    torch.manual_seed(0)
    model_cls, config_cls = shape["model"]
    config = config_cls(**shape["config"], pad_token_id=0, bos_token_id=None, eos_token_id=None,
                        initializer_range=shape["init_std"])
    model_cls(config).save_pretrained(path)


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


def measure(name: str, args) -> str:
    """Both decoders side by side at one shape; returns the shape's last line."""
    shape = SHAPES[name]
    sizes = {k: getattr(args, k) or shape[k] for k in ("batch", "prompt_len", "new", "rounds")}
    rng = np.random.default_rng(0)
    vocab = shape["config"]["vocab_size"]
    prompts = rng.integers(2, vocab, (sizes["batch"], sizes["prompt_len"])).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        write_model(shape, Path(tmp))
        ours, ref = Ours(Path(tmp)), Reference(Path(tmp))
    ours.run(prompts, sizes["new"])  # compile
    ref.run(prompts[:2], 2)
    tokens = sizes["batch"] * sizes["new"]
    rates = {"ours": [], "transformers": []}
    for r in range(sizes["rounds"]):
        seconds, ours_tokens = ours.run(prompts, sizes["new"])
        rates["ours"].append(tokens / seconds)
        seconds, ref_tokens = ref.run(prompts, sizes["new"])
        rates["transformers"].append(tokens / seconds)
        print(f"{name} round {r}: ours {rates['ours'][-1]:.0f} tok/s, "
              f"transformers {rates['transformers'][-1]:.0f} tok/s", flush=True)
    same = np.mean(np.all(ours_tokens == ref_tokens, axis=1))
    first = np.mean(ours_tokens[:, 0] == ref_tokens[:, 0])
    params = sum(p.numel() for p in ref.model.parameters())
    print(f"{name} model: {params} params, {sizes['batch']} prompts x {sizes['prompt_len']} -> "
          f"+{sizes['new']}, {jax.device_count()} JAX device(s), "
          f"torch threads {torch.get_num_threads()}")
    print(f"{name} same greedy tokens: {same:.0%} of rows identical, first token {first:.0%}")
    ours_rate, ref_rate = (statistics.median(rates[k]) for k in ("ours", "transformers"))
    differs = "" if same == 1 else f" (tokens differ in {1 - same:.0%} of rows)"
    return (f"decode_throughput/{name}: {ours_rate / ref_rate:.2f}x {ours_rate:.0f} vs "
            f"{ref_rate:.0f}{differs}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    ap.add_argument("--rounds", type=int, help="default: per shape (SHAPES)")
    ap.add_argument("--batch", type=int, help="default: per shape (SHAPES)")
    ap.add_argument("--prompt-len", type=int, help="default: per shape (SHAPES)")
    ap.add_argument("--new", type=int, help="default: per shape (SHAPES)")
    ap.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    lines = [measure(name, args) for name in (SHAPES if args.shape == "all" else [args.shape])]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
