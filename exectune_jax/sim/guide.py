"""The embedded demo guide: a BPE tokenizer and a tiny Llama trained offline on the arith world.

Real runs start from an off-the-shelf instruct model that speaks English but has never seen our
`<strategy>` format. The demo cannot download one, so it builds a stand-in:

1. a byte-level BPE tokenizer trained on arith problems, atomic strategies (in the step
   language the simulated teacher writes and the simulated core follows) and free-form advice.
   Digits are split one per token so a small model can copy numbers token by token; the chat
   template, EOS and PAD are special tokens;
2. a tiny Llama (`BaseGuideSpec`) given a short language-model warm-up on guide and advisor
   prompts followed by free-form advice written *without* the strategy format.

That *base guide* is saved as an ordinary HF directory (config, safetensors, tokenizer with a
chat template) under `run_dir/base_guide`, deterministic from `cfg.seed`, and reused when present.
Its size and warm-up recipe are `train/warmup.py`'s `BaseGuideSpec`, overridable with
`sft.base_guide.<field>`; this builder is a user of the training library (the warm-up is SFT's
own train step), never the other way round.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from exectune_jax.config import Config
from exectune_jax.data import tasks
from exectune_jax.data.pipeline import Example, encode_example
from exectune_jax.data.tasks.arith import Program
from exectune_jax.data.tasks.base import Problem
from exectune_jax.errors import UserError
from exectune_jax.gcop import prompts, strategy
from exectune_jax.io import claim_dir, temp_sibling
from exectune_jax.models import hf
from exectune_jax.models.architecture import ModelConfig
from exectune_jax.models.transformer import Transformer
from exectune_jax.sim import teacher
from exectune_jax.train.sft import base_guide_dir
from exectune_jax.train.warmup import BaseGuideSpec, spec_from_config, warm_up
from exectune_jax.world import WORLD, WorldSpec, world_from

MARKER = "base_guide.json"  # what the directory was built from; a mismatch is refused

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|end|>"
ROLES = ("system", "user", "assistant")
SPECIAL_TOKENS = (PAD, BOS, EOS, *(f"<|{r}|>" for r in ROLES))
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


# ---------------------------------------------------------------------------------------------
# Texts: atomic strategies and free-form advice


def strategy_steps(problem: Problem) -> list[str]:
    """The gold program of an arith problem as the teacher's atomic steps (the core follows)."""
    program = Program(tuple(map(tuple, problem.meta["program"])), tuple(problem.meta["quantities"]))
    return teacher.atomic(program)


def gold_strategy(problem: Problem) -> str:
    """`<strategy>` block of the problem's atomic gold steps."""
    return strategy.render(strategy_steps(problem))


_PHRASES = {
    "add": "adding {b} to {a}", "subtract": "subtracting {b} from {a}",
    "multiply": "multiplying {a} by {b}", "divide": "dividing {a} by {b}",
}
_OPENINGS = (
    "Read the problem one sentence at a time and keep a running count.",
    "Track how the amount changes with each event in the story.",
    "Think about what each sentence does to the total before you calculate.",
    "Go through the story in order and update the number after every event.",
    "Work out what is there at the start, then follow each change.",
)
_CONNECTORS = ("First", "Then", "Next", "After that", "Later")
_CLOSINGS = (
    "Check your arithmetic before you give the final number.",
    "Make sure you answer exactly what the question asks.",
    "Ignore details that do not change the count.",
    "Write down each intermediate result so you do not lose track.",
    "Be careful with the order of the operations.",
)


def advice(problem: Problem, seed: int = 0, world: WorldSpec = WORLD) -> str:
    """Free-form advice in prose (no tags, no numbered steps), as an instruct model might write.

    It walks through the story in order, one sentence per event, naming the operation and the
    problem's numbers it uses, but never an intermediate result or the answer. Reading a story
    in order and copying its numbers is what an off-the-shelf instruct model does unprompted;
    the strategy format, step references and what the core can follow are left for SFT. The
    core reads each sentence that names an operation as a prose step (`sim/follow.py`): it
    carries some out, and "an earlier amount" is a vague reference it often will not.
    """
    rng = random.Random(f"advice/{seed}/{problem.id}")
    q = problem.meta["quantities"]
    parts = [rng.choice(_OPENINGS)]
    for j, (op, left, right) in enumerate(problem.meta["program"]):
        a, b = (_mention(ref, q, j) for ref in (left, right))
        connector = _CONNECTORS[min(j, len(_CONNECTORS) - 1)] if j == 0 or rng.random() < world.advice_connector_rate else "Then"
        parts.append(f"{connector} think about {_PHRASES[op].format(a=a, b=b)}.")
    parts.append(rng.choice(_CLOSINGS))
    return " ".join(parts)


def _mention(ref: str, quantities: Sequence[int], step: int) -> str:
    """A program operand in prose: the problem's number, or an earlier amount without its value."""
    if ref.startswith("q"):
        return str(quantities[int(ref[1:])])
    return "the amount so far" if int(ref[1:]) == step - 1 else "an earlier amount"


def tokenizer_corpus(problems: Sequence[Problem], family: str = "math",
                     world: WorldSpec = WORLD) -> Iterable[str]:
    """Every kind of text the guide will read or write: prompts, strategies, advice."""
    first = problems[0]
    instructions = {
        make(first, family)[0]["content"].removeprefix(first.prompt)
        for make in (prompts.guide_messages, prompts.advisor_messages)
    }
    yield from sorted(instructions)
    for p in problems:
        yield p.prompt
        yield gold_strategy(p)
        yield advice(p, world=world)


# ---------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE with single-digit tokens and chat special tokens, as an HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        model_max_length=BaseGuideSpec.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def guide_model_config(tokenizer, spec: BaseGuideSpec) -> ModelConfig:
    return ModelConfig(
        model_type="llama",
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# ---------------------------------------------------------------------------------------------
# Warm-up


def warmup_examples(
    problems: Sequence[Problem], tokenizer, seq_len: int, family: str = "math", seed: int = 0,
    world: WorldSpec = WORLD,
) -> list[Example]:
    """Guide or advisor prompt followed by free-form advice; loss on every token.

    Training on the prompt too (unlike SFT) is what makes this a language-model warm-up: the
    model learns the problems' language, not only the advice.
    """
    out = []
    for i, p in enumerate(problems):
        make = prompts.guide_messages if i % 2 == 0 else prompts.advisor_messages
        ex = encode_example(tokenizer, make(p, family), advice(p, seed, world), p.id)
        if len(ex.inputs) <= seq_len:
            out.append(dataclasses.replace(ex, loss_mask=np.ones_like(ex.loss_mask)))
    return out


def build_base_guide(problems: Sequence[Problem], spec: BaseGuideSpec, seed: int, out: Path,
                     family: str = "math", remat: str = "none", world: WorldSpec = WORLD) -> list[float]:
    """Tokenizer + warmed-up tiny model written to `out` as an HF directory; returns the losses.

    `remat` is the warm-up's rematerialisation policy (`model.remat`); it changes speed only.
    `world` words the advice it is warmed up on.
    """
    tokenizer = train_tokenizer(tokenizer_corpus(problems, family, world), spec.vocab_size)
    mcfg = guide_model_config(tokenizer, spec)
    with jax.default_device(jax.local_devices()[0]):
        model = Transformer(mcfg, rngs=nnx.Rngs(seed), remat=remat)
        examples = warmup_examples(problems, tokenizer, spec.warmup_seq_len, family, seed, world)
        losses = warm_up(model, examples, spec, seed)
    hf.save(model, mcfg, out, tokenizer=tokenizer)
    return losses


def _marker(seed: int, spec: BaseGuideSpec, problems: Sequence[Problem], world: WorldSpec) -> dict:
    """What the guide is a function of: seed, spec, the corpus (not how options spelled it) and
    the one world value its advice reads."""
    corpus = hashlib.sha256("\n".join(p.prompt for p in problems).encode()).hexdigest()
    return {"seed": seed, "spec": dataclasses.asdict(spec), "corpus_sha256": corpus,
            "advice_connector_rate": world.advice_connector_rate}


def ensure_base_guide(cfg: Config) -> Path:
    """run_dir/base_guide, built on first use (a minute on a CPU) and reused afterwards; with
    `model.path` set, that pretrained guide is the base guide and nothing is built.

    The demo guide knows the arith world, so its corpus is the arith train split (with the
    config's task options when the task is arith). A directory built from another seed, spec or
    corpus is refused rather than silently reused: later stages were trained from it.
    """
    if cfg.model.path:
        path = Path(cfg.model.path)
        if not (path / hf.CONFIG_FILE).exists():
            raise UserError(f"model.path={path}: no {hf.CONFIG_FILE} there; download the guide "
                            f"or import it (exectune import FILE.gguf {path})")
        return path
    spec = spec_from_config(cfg)
    options = dict(cfg.task.options) if cfg.task.name == "arith" else {}
    problems = tasks.get("arith", **options).problems("train")
    out = base_guide_dir(cfg)
    world = world_from(cfg.sim.world)
    marker = _marker(cfg.seed, spec, problems, world)
    if out.exists():
        found = out / MARKER
        built = json.loads(found.read_text()) if found.exists() else {}
        # guides built before the world could be overridden worded their advice at the default rate
        built.setdefault("advice_connector_rate", WORLD.advice_connector_rate)
        if {k: built.get(k) for k in marker} != json.loads(json.dumps(marker)):
            raise UserError(
                f"{out}: built with other settings than this run's (seed, arith task.options, "
                f"sft.base_guide, sim.world.advice_connector_rate); use another run_dir or delete {out}"
            )
        return out
    if not problems:
        raise UserError("the demo guide needs arith train problems; set task.options.n_train > 0")
    tmp = temp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    losses = build_base_guide(problems, spec, cfg.seed, tmp, remat=cfg.model.remat, world=world)
    (tmp / MARKER).write_text(json.dumps({**marker, "warmup_loss": losses[-1]}, indent=2) + "\n")
    claim_dir(tmp, out)  # where another process finished first, its identical guide stays
    return out


def run(cfg: Config, **_: object) -> int:
    """`exectune base-guide`: the demo's base guide in run_dir/base_guide (built once)."""
    print(f"exectune base-guide: {ensure_base_guide(cfg)}")
    return 0
