"""The PyTorch + transformers side of gpu_check.py, and the timer both sides use.

Each function builds a transformers Qwen3 of the shape gpu_check gives it (random weights) on
the best device and times one workload the way a PyTorch user would write it: an SFT step
(bf16 autocast, fp32 parameters, AdamW), greedy `generate` in bf16, and one GRPO step (sampled
`generate`, a log-prob forward of the frozen reference, a clipped-ratio loss with a k3 KL term,
backward and AdamW). torch is imported inside them so the JAX process never loads it.
"""

from __future__ import annotations

import time


def timed(fn, warmup: int, iters: int) -> float:
    """Mean seconds of `fn()` over `iters` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def qwen3(cfg):
    """(torch, a transformers Qwen3 of `cfg`'s shape on the best device, device)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf_cfg = Qwen3Config(**{k: v for k, v in cfg.to_hf().items() if k != "architectures"})
    hf_cfg._attn_implementation = "sdpa"
    return torch, Qwen3ForCausalLM(hf_cfg).to(device), device


def _sync(torch, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def sft(cfg, batch: int, seq_len: int, iters: int) -> dict:
    torch, model, device = qwen3(cfg)
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
        _sync(torch, device)

    seconds = timed(one, 2, iters)
    del model, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"step_s": seconds, "tokens_per_s": batch * seq_len / seconds}


def decode(cfg, batch: int, prompt_len: int, new: int) -> dict:
    torch, model, device = qwen3(cfg)
    model = model.to(dtype=torch.bfloat16).eval()
    ids = torch.randint(2, cfg.vocab_size, (batch, prompt_len), device=device)

    def one():
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=0)
        _sync(torch, device)

    seconds = timed(one, 1, 2)
    del model
    return {"s": seconds, "new_tokens_per_s": batch * new / seconds}


def grpo(cfg, *, prompts: int, group: int, prompt_len: int, new: int, micro: int, iters: int,
         clip_eps: float, beta: float, lr: float) -> dict:
    """Seconds of each phase of one GRPO step, averaged over `iters` steps after one warm-up.

    sample: the policy's weights copied into a bf16 sampling model, then `generate` with
    sampling (temperature 1, no top-k/top-p) of `group` completions per prompt, all `new`
    tokens long. logprob: the frozen bf16 reference's log-probs of the completions. update:
    the policy's log-probs (bf16 autocast, gradient checkpointing, only the completion
    positions through the head), the clipped surrogate (old log-probs = the policy's own,
    detached: one update per batch) plus beta times the k3 KL to the reference, token mean,
    backward per micro-batch, gradient clipping and one AdamW step.
    """
    torch, model, device = qwen3(cfg)
    model.gradient_checkpointing_enable()
    model.train()
    bf16 = torch.bfloat16
    sampler = qwen3(cfg)[1].to(dtype=bf16).eval()
    reference = qwen3(cfg)[1].to(dtype=bf16).eval()
    reference.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=device == "cuda")
    ids = torch.randint(2, cfg.vocab_size, (prompts, prompt_len), device=device)
    rewards = torch.rand(prompts, group, device=device)
    adv = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6))
    adv = adv.reshape(-1, 1)

    def completion_logprobs(m, seqs):
        logits = m(input_ids=seqs, logits_to_keep=new + 1).logits[:, :-1].float()
        targets = seqs[:, -new:, None]
        return logits.gather(-1, targets)[..., 0] - logits.logsumexp(-1)

    def step() -> dict:
        t0 = time.perf_counter()
        with torch.no_grad():
            sampler.load_state_dict(model.state_dict())
            seqs = sampler.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                    temperature=1.0, top_k=0, top_p=1.0,
                                    num_return_sequences=group, max_new_tokens=new,
                                    min_new_tokens=new, pad_token_id=0)
        _sync(torch, device)
        t1 = time.perf_counter()
        with torch.no_grad():
            ref = torch.cat([completion_logprobs(reference, s) for s in seqs.split(micro)])
        _sync(torch, device)
        t2 = time.perf_counter()
        n_tokens = seqs.shape[0] * new
        for s, r, a in zip(seqs.split(micro), ref.split(micro), adv.split(micro), strict=True):
            with torch.autocast(device, dtype=bf16):
                logp = completion_logprobs(model, s)
            ratio = torch.exp(logp - logp.detach())
            surrogate = -torch.min(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
            d = r - logp
            loss = (surrogate + beta * (torch.exp(d) - d - 1)).sum() / n_tokens
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(torch, device)
        return {"sample_s": t1 - t0, "logprob_s": t2 - t1, "update_s": time.perf_counter() - t2}

    step()
    runs = [step() for _ in range(iters)]
    return {k: sum(r[k] for r in runs) / iters for k in runs[0]}
