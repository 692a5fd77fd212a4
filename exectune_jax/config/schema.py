"""The config schema: one dataclass per section, each field documented where it is declared
(the comments beside and above it are its `exectune config` help), with its valid range."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from exectune_jax.errors import UserError

PACKAGE_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SIM_URL = "sim"  # an endpoint whose base_url is "sim" talks to the embedded loopback server


class ConfigError(UserError):
    """A user-fixable problem in a config file or override."""


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    """Low-rank adapters (models/lora.py): with rank > 0 only the adapters train and checkpoint."""

    RANGES: ClassVar[dict[str, str]] = {"rank": "[0, inf)", "alpha": "(0, inf)",
                                        "dropout": "[0, 1)"}

    rank: int = 0  # r of every adapter; 0 = full fine-tuning (no adapters)
    alpha: float = 16.0  # adapter output scaled by alpha / rank (PEFT's lora_alpha)
    # dropout on each adapter's input in SFT steps (PEFT's lora_dropout); RL steps run without
    # it, as TRL's GRPO does by default, so the policy's ratio to its own sampler starts at 1
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))  # HF/PEFT names


@dataclass
class ModelConfig:
    """The guide model."""

    RANGES: ClassVar[dict[str, str]] = {"max_seq_len": "[1, inf)", "head_chunk": "[0, inf)"}

    path: str | None = None  # HF checkpoint dir; None = the embedded demo guide, built on first use
    dtype: str = "float32"  # compute dtype: float32 | bfloat16
    param_dtype: str = "float32"  # stored parameter dtype: float32 | bfloat16
    max_seq_len: int = 256  # prompt + strategy tokens the guide ever sees
    remat: str = "full"  # what training recomputes per block: none | full | save_dots
    head_chunk: int = 64  # positions per step of the loss head (train/head.py); 0 = all at once
    lora: LoraConfig = field(default_factory=LoraConfig)  # adapters for SFT and RL; rank 0 = off


@dataclass
class MeshConfig:
    """Device mesh; -1 fills the remaining devices."""

    RANGES: ClassVar[dict[str, str]] = {
        "data": "[-1, inf)",
        "fsdp": "[-1, inf)",
        "tensor": "[-1, inf)",
    }

    data: int = 1  # data-parallel replicas
    fsdp: int = -1  # parameter, optimizer and batch sharding
    tensor: int = 1  # tensor (model) parallel shards
    # the device kind this topology is sized for: gpu | tpu; None = any, CPU included. A stage
    # that finds only CPU devices for a gpu or tpu config stops and names the missing install
    platform: str | None = None


@dataclass
class TaskConfig:
    """The problems: a registered task and its options."""

    name: str = "arith"  # arith | funcs | gsm8k | humaneval | mbpp | kodcode | jsonl (any registered task)
    options: dict[str, Any] = field(default_factory=dict)  # keyword options of tasks.get(name, ...)


@dataclass
class EndpointConfig:
    """One black-box model. The key is read from the environment variable `api_key_env`."""

    RANGES: ClassVar[dict[str, str]] = {
        "max_tokens": "[1, inf)",
        "temperature": "[0, 2]",
        "timeout_s": "(0, inf)",
    }

    provider: str = "openai"  # openai (any OpenAI-compatible server) | anthropic
    base_url: str = SIM_URL  # the API's root URL, with or without /v1; "sim" = the embedded loopback server
    model: str = "sim-core"  # the provider's model name (priced by api.prices)
    api_key_env: str | None = None  # environment variable holding the key; None = no key
    max_tokens: int = 512  # reply token limit per call
    temperature: float = 0.0  # sampling temperature of the replies
    timeout_s: float = 60.0  # per HTTP call


@dataclass
class ApiConfig:
    """Everything that talks to paid black-box models goes through one pool with these limits."""

    RANGES: ClassVar[dict[str, str]] = {
        "concurrency": "[1, inf)",
        "rpm": "(0, inf)",
        "tpm": "(0, inf)",
        "max_retries": "[0, inf)",
        "backoff_base_s": "[0, inf)",
        "backoff_max_s": "[0, inf)",
        "circuit_breaker_failures": "[1, inf)",
        "circuit_breaker_cooldown_s": "[0, inf)",
        "budget_usd": "[0, inf)",
        "batch_poll_s": "(0, inf)",
        "batch_poll_max_s": "(0, inf)",
        "max_failure_share": "[0, 1]",
    }

    core: EndpointConfig = field(default_factory=EndpointConfig)  # executes the strategies
    teacher: EndpointConfig = field(  # proposes and revises strategies (stage 1)
        default_factory=lambda: EndpointConfig(model="sim-teacher", temperature=1.0)
    )
    # reads (problem, strategy, response): did the core follow? Also the optional LLM judge of
    # rl.weights.judge
    judge: EndpointConfig | None = field(
        default_factory=lambda: EndpointConfig(model="sim-judge", max_tokens=64)
    )
    core_strong: EndpointConfig | None = field(  # a bigger core: a reference row in eval
        default_factory=lambda: EndpointConfig(model="sim-core-strong")
    )
    # another core the guides may meet, such as the vendor's next model: eval executes every
    # guide with it when eval.cores names it
    core_next: EndpointConfig | None = field(
        default_factory=lambda: EndpointConfig(model="sim-core-next")
    )
    concurrency: int = 32  # calls in flight at once
    rpm: float | None = None  # requests per minute; None = unlimited
    tpm: float | None = None  # tokens per minute; None = unlimited
    max_retries: int = 8  # per call, for 408/409/429/5xx, timeouts and connection errors
    backoff_base_s: float = 0.05  # first retry delay (doubles per retry, with jitter)
    backoff_max_s: float = 10.0  # longest retry delay
    circuit_breaker_failures: int = 50  # consecutive failures that open the breaker
    circuit_breaker_cooldown_s: float = 5.0  # how long an open breaker refuses calls
    budget_usd: float | None = None  # stop starting new calls past this spend
    # a stage whose calls failed (after retries) above this share of its requests exits
    # non-zero: failed calls are never scored, so a stage mostly made of them measured nothing
    max_failure_share: float = 0.05
    prices: str | None = None  # price table YAML; None = the packaged configs/prices.yaml
    # estimator of "followed" behind executability: judge (api.judge reads each guided
    # execution; one call each) | trace (math: the core's step lines, checked; no extra call)
    follow_check: str = "judge"
    mode: str = "online"  # online | batch (half price, may wait): sample and eval calls; RL is always online
    stage_modes: dict[str, str] = field(default_factory=dict)  # per stage name or suffix: {core_alone: online}
    batch_poll_s: float = 0.5  # first wait before polling a batch; doubles up to batch_poll_max_s
    batch_poll_max_s: float = 60.0  # longest wait between two polls of a batch


@dataclass
class SimConfig:
    """The embedded loopback server standing in for the core, teacher and judge APIs."""

    RANGES: ClassVar[dict[str, str]] = {
        "port": "[0, 65535]",
        "latency_ms": "[0, inf)",
        "rpm": "(0, inf)",
        "fault_rate": "[0, 1)",
        "hang_s": "[0, inf)",
        "seed": "[0, inf)",
        "batch_delay_s": "[0, inf)",
        "batch_expire_s": "(0, inf)",
    }

    host: str = "127.0.0.1"  # address to listen on
    port: int = 0  # 0 = a free port
    latency_ms: float = 0.0  # added to every reply
    rpm: float | None = None  # answer 429 with Retry-After above this rate
    fault_rate: float = 0.0  # fraction of requests answered with an injected fault
    hang_s: float = 2.0  # how long an injected `timeout` fault stalls before dropping the connection
    seed: int = 0  # of faults, and of sampled (temperature > 0) answers: the teacher's samples differ per seed
    # JSONL where the server records whether sim-core really followed each strategy it was given
    # (the ground truth the follow-check estimators are measured against; it never travels
    # through the API); None = not recorded
    truth_log: str | None = None
    batch_delay_s: float = 0.0  # seconds a batch takes to process (its items finish evenly over it)
    batch_expire_s: float | None = None  # a batch unfinished this long after creation expires; None = 24 h
    # Values of the simulated world other than the default's (`WorldSpec` in world.py, each
    # value's meaning in docs/world.md): a field -> value (a core profile: some of its fields; a
    # style mix: every style -> weight), plus `teacher_habit_rate`, the compound share of
    # `teacher_habit` (its other styles rescaled to keep their proportions). {} = the default
    # world. The server runs this world and results.json records its hash and these overrides;
    # a run_dir holds one world (its call cache answers in the world it was filled in).
    world: dict[str, Any] = field(default_factory=dict)


@dataclass
class SampleConfig:
    """Stage 1: teacher-guided acceptance sampling."""

    RANGES: ClassVar[dict[str, str]] = {
        "proposals": "[1, inf)",
        "revisions": "[0, inf)",
        "verify_samples": "[1, inf)",
        "max_cost_vs_core": "(0, inf)",
        "n_problems": "[1, inf)",
    }

    proposals: int = 4  # K strategies proposed per problem
    revisions: int = 2  # R teacher revisions of a failed strategy
    verify_samples: int = 1  # core executions that must all be correct to accept
    # ... and, when set, cost at most this multiple of the core alone on the problem (one more
    # core call per problem). A strategy the core cannot follow is ignored and costs the core's
    # own attempt plus its tokens; null (the paper's acceptance) keeps it when the answer is right.
    max_cost_vs_core: float | None = None
    n_problems: int | None = None  # None = the whole train split
    unfiltered: bool = False  # keep every well-formed strategy (the "SFT guide" baseline)
    out: str = "sample"  # stage directory under run_dir: accepted.jsonl, rejected.jsonl, summary.json
    require_followed: bool = False  # accept only strategies the follow check says the core followed


@dataclass
class SftConfig:
    """Stage 2: supervised fine-tuning on (problem, strategy) pairs."""

    RANGES: ClassVar[dict[str, str]] = {
        "steps": "[1, inf)",
        "batch_size": "[1, inf)",
        "seq_len": "[8, inf)",
        "lr": "(0, inf)",
        "warmup_steps": "[0, inf)",
        "weight_decay": "[0, inf)",
        "clip_norm": "[0, inf)",
        "grad_accum": "[1, inf)",
        "eval_every": "[0, inf)",
        "checkpoint_every": "[0, inf)",
        "keep_checkpoints": "[1, inf)",
        "held_out": "[0, 1)",
        "eval_problems": "[0, inf)",
        "eval_max_new_tokens": "[1, inf)",
    }

    name: str = "sft"  # stage directory under run_dir (the demo also trains "sft_unfiltered")
    data: str | None = None  # accepted.jsonl; None = run_dir/<sample.out>/accepted.jsonl
    init: str | None = None  # HF guide to start from; None = model.path (or the demo base guide)
    steps: int = 200  # optimizer steps
    batch_size: int = 8  # packed rows of seq_len tokens per micro-batch (global, all processes)
    seq_len: int = 256  # tokens per packed row
    lr: float = 3e-3  # peak; tuned for the demo guide (use ~1e-5 for a 1-2B model)
    warmup_steps: int = 10  # linear warm-up, then cosine decay to 10% of lr
    weight_decay: float = 0.01  # AdamW, on matrices only
    clip_norm: float = 1.0  # global gradient norm clip; 0 = off
    grad_accum: int = 1  # micro-batches averaged per optimizer step
    eval_every: int = 100  # eval loss + strategy validity every N steps (and at the end); 0 = never
    checkpoint_every: int = 50  # steps between checkpoints (and at the end); 0 = end only
    keep_checkpoints: int = 2  # newest checkpoints kept
    held_out: float = 0.05  # fraction of accepted problems kept out of training for the eval loss
    eval_problems: int = 16  # validation problems the guide greedily writes strategies for
    eval_max_new_tokens: int = 160  # strategy token budget when checking validity
    # demo guide size and warm-up: overrides of train/warmup.py BaseGuideSpec (used when building it)
    base_guide: dict[str, Any] = field(default_factory=dict)


@dataclass
class RlConfig:
    """Stage 3: structure-aware GRPO (symbols as in the paper: G, beta, epsilon, mu)."""

    RANGES: ClassVar[dict[str, str]] = {
        "steps": "[1, inf)",
        "group_size": "[2, inf)",
        "prompts_per_step": "[1, inf)",
        "beta": "[0, inf)",
        "clip_eps": "(0, inf)",
        "mu": "[1, inf)",
        "lr": "(0, inf)",
        "max_new_tokens": "[1, inf)",
        "temperature": "(0, inf)",
        "top_p": "(0, 1]",
        "staleness": "[0, inf)",
        "core_only_samples": "[1, inf)",
        "checkpoint_every": "[1, inf)",
        "keep_checkpoints": "[1, inf)",
        "micro_batch": "[0, inf)",
        "warmup_steps": "[0, inf)",
        "weight_decay": "[0, inf)",
        "clip_norm": "[0, inf)",
        "judge_max_tokens": "[1, inf)",
        "held_out": "[0, inf)",
        "forecast_batches": "[0, inf)",
        "std_floor": "[0, inf)",
        "cost_resolution_usd": "[0, inf)",
        "max_extra_groups": "[0, inf)",
    }

    name: str = "rl"  # stage directory under run_dir (the demo also trains "advisor_rl")
    steps: int = 40  # GRPO steps (one batch of prompts each)
    group_size: int = 8  # G
    prompts_per_step: int = 8  # P problems per step
    beta: float = 0.04  # KL weight to the frozen reference
    clip_eps: float = 0.2  # epsilon of the clipped ratio objective
    mu: int = 1  # policy updates per batch
    lr: float = 1e-4  # the demo guide's (3e-4 undid its SFT accuracy); a 1.7B guide wants ~1e-6
    max_new_tokens: int = 96  # strategy token budget per sample
    temperature: float = 1.0  # sampling temperature of the guide
    top_p: float = 1.0  # nucleus sampling; 1 = off
    staleness: int = 1  # batches the sampler may run ahead of labelling; 0 = synchronous
    preset: str = "exectune"  # exectune | advisor
    weights: dict[str, float] = field(default_factory=dict)  # overrides of the preset's weights
    core_only_samples: int = 4  # samples per problem to estimate core-alone success
    # advantage estimator (train/advantages.py, derivation in docs/rl.md): grpo (divide by each
    # group's std) | dr_grpo (reward units: each reward weight acts as written) | batch (one
    # std for the batch). dr_grpo, floor 0.1 and USD 0.0001 replaced grpo, 0 and 0 by the rule
    # of docs/rl.md ("The validation run": higher validation accuracy than grpo in 2 of 3
    # seeds, by 1 and 2 problems of 500, lower in the third by 11; alpha at worst 0.2 points
    # lower). A margin that small decides nothing beyond the rule: docs/rl.md says so
    advantage: str = "dr_grpo"
    std_floor: float = 0.1  # reward units: grpo and batch divide by at least this spread
    # USD: a group whose rewards differ by less than what this costs (times the cost weight)
    # has no spread and teaches nothing, so token-count noise in the core's bill moves no weight
    cost_resolution_usd: float = 0.0001
    # the train problems RL draws from (train/problem_pool.py): train (all of them) |
    # after_sample (those after the first sample.n_problems, which acceptance sampling covers) |
    # START-END (train problems START to END - 1, outside acceptance's). train stayed by the rule
    # of docs/rl.md: after_sample was higher in 1 of 3 validation seeds, its α 7.2 points lower in one
    problems: str = "train"
    # dynamic sampling (train/dynamic_sampling.py): groups RL may draw per step beyond its batch,
    # from rl.problems, to replace groups without spread (they teach nothing); 0 = off. 8 (one
    # demo batch's worth) replaced 0 by the rule of docs/rl.md ("Dynamic sampling alone"): higher
    # validation accuracy in 3 of 3 seeds, by 1, 1 and 2 problems of 500; alpha at worst 1.2
    # points lower. A margin that small decides nothing beyond the rule: docs/rl.md says so
    max_extra_groups: int = 8
    init: str | None = None  # HF guide to start from (and the KL reference); None = run_dir/sft/guide
    checkpoint_every: int = 10  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept
    micro_batch: int = 16  # sequences per forward/backward pass (bounds activations); 0 = all
    warmup_steps: int = 0  # linear warm-up of lr, in updates
    weight_decay: float = 0.0  # AdamW, on matrices only
    clip_norm: float = 1.0  # global gradient norm clip; 0 = off
    judge_max_tokens: int = 8  # the optional LLM judge replies with one number
    held_out: int = 64  # validation problems for the before/after accuracy report; 0 = none
    # RL's first batches sampled locally at a fresh start: the cache replays they would get
    # forecast what the stage pays, printed before its first paid call (train/forecast.py; also
    # `exectune estimate --rl-pilot`); 0 = none. A problem's group repeats together, so the
    # pilot's size is its problems: 8 batches came within 1-3 points of the share RL then
    # replayed (docs/real-apis.md, "Where estimate's stated numbers come from")
    forecast_batches: int = 8


@dataclass
class EvalConfig:
    """The method table: every guide, and the core alone, on the same problems."""

    RANGES: ClassVar[dict[str, str]] = {
        "n_problems": "[1, inf)",
        "samples": "[1, inf)",
        "max_new_tokens": "[1, inf)",
        "batch_size": "[1, inf)",
        "guide_usd_per_mtok": "[0, inf)",
        "lambdas": "[0, inf)",
    }

    split: str = "test"  # the task split scored: test | validation | train
    n_problems: int | None = None  # None = the whole split
    samples: int = 1  # core executions per (problem, strategy)
    max_new_tokens: int = 96  # guide token budget per strategy
    # method -> guide HF dir (relative to run_dir unless absolute); a missing dir skips the row
    guides: dict[str, str] = field(default_factory=lambda: {
        "base_guide": "base_guide", "sft_unfiltered": "sft_unfiltered/guide",
        "exectune_sft": "sft/guide", "advisor_rl": "advisor_rl/guide", "exectune": "rl/guide"})
    advisor_methods: list[str] = field(default_factory=lambda: ["advisor_rl"])  # free-form prompts
    core_strong: bool = True  # add the bigger core alone (when api.core_strong is set)
    # the api endpoints that execute every guide, one table each: core | core_next | core_strong.
    # The first one's table is results.json's `rows` (with core_strong alone beside it); each
    # other's is under `cores`, keyed by the endpoint's name
    cores: list[str] = field(default_factory=lambda: ["core"])
    batch_size: int = 64  # guide prompts generated together
    out: str = "eval"  # stage directory under run_dir: results.json, results.md, plots
    guide_usd_per_mtok: float = 0.0  # the self-hosted guide's cost per million generated tokens (break-even)
    # λ of the utility J = accuracy − λ·USD per problem (utility.py), per USD, reported for every
    # row: from 0 (cost is free) to 1000 (USD 0.001 per problem, about what the Haiku-priced
    # core alone costs on arith, weighs as much as every answer right), spaced ~3x apart
    lambdas: list[float] = field(default_factory=lambda: [0.0, 10.0, 30.0, 100.0, 300.0, 1000.0])


@dataclass
class MetricsConfig:
    """What a training stage reports besides metrics.jsonl."""

    tensorboard: bool = False  # TensorBoard event files in <stage>/tensorboard
    progress: bool = True  # a progress bar on the terminal
    wandb: str | None = None  # W&B project to log metrics and the resolved config to; None = off


@dataclass
class ResumeConfig:
    """What a resumed stage may differ in from the config it started with."""

    # dotted fields (e.g. [sft.lr]) a resume may change; a change in any other field that
    # alters the run stops the stage
    allow_changes: list[str] = field(default_factory=list)


@dataclass
class ExportConfig:
    """The exported guide's model card."""

    license: str = "apache-2.0"  # the card's `license:` (Hub license id); match the base model's


@dataclass
class Config:
    RANGES: ClassVar[dict[str, str]] = {"seed": "[0, inf)"}

    run_dir: str = "runs/demo"  # every stage writes under here; the same run_dir resumes
    seed: int = 0  # data order, splits, sampling and initialisation
    model: ModelConfig = field(default_factory=ModelConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    rl: RlConfig = field(default_factory=RlConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
