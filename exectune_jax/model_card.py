"""The README.md model card of an exported guide, and the secret scrubbing it relies on.

A card tells a reader of the Hub page what the guide is for and how it was made: the training
recipe (from the run's resolved config), the acceptance-sampling data summary, the last value of
every training metric, and the method table of the evaluation when there is one. Everything is
read from the run directory the stages wrote; nothing is recomputed.

Configs hold the NAMES of the environment variables that carry API keys, never the keys. The card
must stay that way even when a user pasted a key where a name belongs, so every config value
passes through `scrub` before it is written, and `find_secrets` checks the finished export.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from exectune_jax import layout
from exectune_jax.config import Config, load_config, to_dict
from exectune_jax.data import tasks
from exectune_jax.data.tasks import Problem
from exectune_jax.errors import UserError
from exectune_jax.gcop import prompts
from exectune_jax.train.metrics import read_metrics

REDACTED = "<redacted>"
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
MIN_SECRET_LEN = 8  # shorter values (flags, small numbers) would redact innocent text
TAGS = ("exectune", "gcop", "strategy-generation", "jax", "flax")


# ---------------------------------------------------------------------------------------------
# Secrets


def key_env_names(cfg: Config) -> set[str]:
    """Every `api_key_env` the config names, plus the Hub token's variable."""
    names = {"HF_TOKEN"}
    for name in ("core", "teacher", "judge", "core_strong", "core_next"):
        ep = getattr(cfg.api, name)
        if ep is not None and ep.api_key_env:
            names.add(ep.api_key_env)
    return names


def secret_values(cfg: Config, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """value -> variable name, for the variables that hold keys (named by the config or by
    their look: *KEY*, *TOKEN*, *SECRET*, ...)."""
    names = key_env_names(cfg) | {n for n in environ if SECRET_NAME.search(n)}
    return {environ[n]: n for n in sorted(names)
            if len(environ.get(n, "").strip()) >= MIN_SECRET_LEN}


def _scrub_url(text: str) -> str:
    """Credentials in a URL (user:password@, ?key=...) never leave the machine."""
    parts = urlsplit(text)
    if not parts.scheme or not parts.netloc:
        return text
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def scrub(value: Any, secrets: Iterable[str], key: str = "") -> Any:
    """`value` (nested dicts/lists of config data) with every secret replaced by REDACTED.

    A string holding a secret value is redacted whole; an `*_env` field that does not look like
    a variable name (a key pasted where its variable's name belongs) is redacted too.
    """
    secrets = tuple(secrets)
    if isinstance(value, Mapping):
        return {k: scrub(v, secrets, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, secrets, key) for v in value]
    if not isinstance(value, str):
        return value
    value = _scrub_url(value)
    if any(s in value for s in secrets):
        return REDACTED
    if key.endswith("_env") and value and not ENV_NAME.fullmatch(value):
        return REDACTED
    return value


def _file_contains(file: Path, needles: Iterable[bytes], chunk: int = 1 << 24) -> set[bytes]:
    """The needles found in `file`, read in chunks (weights may be many GB) that overlap by the
    longest needle, so a needle split across two chunks is still found."""
    needles = set(needles)
    overlap = max(map(len, needles), default=1) - 1
    found, tail = set(), b""
    with open(file, "rb") as f:
        while block := f.read(chunk):
            window = tail + block
            found |= {n for n in needles if n in window}
            tail = window[-overlap:] if overlap else b""
    return found


def find_secrets(directory: Path, secrets: Mapping[str, str]) -> list[tuple[Path, str]]:
    """(file, variable name) for every file under `directory` whose bytes contain a secret."""
    needles = {v.encode(): n for v, n in secrets.items()}
    if not needles:
        return []
    hits = []
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        hits += [(file, needles[n]) for n in sorted(_file_contains(file, needles))]
    return hits


# ---------------------------------------------------------------------------------------------
# What the run wrote


@dataclass(frozen=True)
class CardFacts:
    """Everything the card says; `gather` reads it from a run directory, `render` writes it."""

    name: str  # the Hub repo id, or the export directory's name
    dtype: str
    source: str  # what was exported, e.g. "rl/guide" or "sft/checkpoints/20"
    recipe: dict  # the resolved config, scrubbed
    recipe_origin: str
    base_model: str | None = None
    instruction: str | None = None  # the guide prompt's instruction line for the task family
    data: dict | None = None  # sample/summary.json
    metrics: dict[str, dict[str, tuple[int, float]]] = field(default_factory=dict)
    eval_table: str | None = None  # eval/results.md
    plots: tuple[str, ...] = ()  # files copied beside the card, relative paths
    license: str | None = None  # the Hub license id (export.license)


def base_model_id(cfg: Config) -> str | None:
    """The Hub id the guide was fine-tuned from, when the config names one (not a local dir)."""
    for candidate in (cfg.sft.init, cfg.model.path):
        if candidate and not Path(candidate).exists() and HUB_ID.fullmatch(candidate):
            return candidate
    return None


def guide_instruction(cfg: Config) -> str | None:
    """The line the guide prompt appends to a problem, for the card's usage example."""
    try:
        family = tasks.get(cfg.task.name, **cfg.task.options).family
    except UserError:  # the task's data may live only where training ran
        return None
    probe = Problem(id="", prompt="", answer="", split="test", meta={})
    return prompts.guide_messages(probe, family)[0]["content"].strip()


TIMING = re.compile(r"^(step|time|lr|device_busy|tokens_per_s)$|_s$")


def last_metrics(path: Path) -> dict[str, tuple[int, float]]:
    """metric -> (step, value) of its last record in a metrics.jsonl: numbers that describe the
    model (losses, rewards, rates), not the machine it ran on (times, throughput)."""
    out: dict[str, tuple[int, float]] = {}
    for record in read_metrics(path):
        for k, v in record.items():
            if not TIMING.search(k) and isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = (int(record.get("step", 0)), v)
    return out


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------------------------------------
# Rendering (pure)


def _front_matter(f: CardFacts) -> str:
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation"}
    if f.license:
        meta["license"] = f.license
    if f.base_model:
        meta["base_model"] = f.base_model
    meta["tags"] = list(TAGS)
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _usage(f: CardFacts) -> str:
    instruction = f.instruction or "<the task's guide instruction>"
    return f"""## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{f.name}")
model = AutoModelForCausalLM.from_pretrained("{f.name}")
problem = "Tom has 3 boxes of 12 pencils and gives away 5. How many pencils are left?"
messages = [{{"role": "user", "content": problem + "\\n" + {instruction!r}}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False,
                                       return_tensors="pt", return_dict=True)
out = model.generate(**inputs, max_new_tokens=128, do_sample=False, stop_strings=["</strategy>"],
                     tokenizer=tokenizer)
strategy = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
```

Give the problem and `strategy` to the core model; it follows the steps and answers.
"""


def _recipe(f: CardFacts) -> str:
    r = f.recipe
    api, sample, sft, rl = r["api"], r["sample"], r["sft"], r["rl"]

    def endpoint(ep: Mapping | None) -> str:
        return "–" if ep is None else f"`{ep['model']}` ({ep['provider']}, {ep['base_url']})"

    rows = [
        ("task", f"`{r['task']['name']}` {r['task']['options'] or ''}".strip()),
        ("guide initialisation",
         f"`{f.base_model or r['model']['path'] or 'embedded demo base guide'}`"),
        ("core (executes strategies)", endpoint(api["core"])),
        ("teacher (stage 1 only)", endpoint(api["teacher"])),
        ("stage 1: acceptance sampling", f"K={sample['proposals']} proposals, "
         f"R={sample['revisions']} revisions, {sample['verify_samples']} verifying execution(s)"),
        ("stage 2: SFT", f"{sft['steps']} steps, batch {sft['batch_size']} x {sft['seq_len']} "
         f"tokens, "
         f"lr {sft['lr']}, warm-up {sft['warmup_steps']}, weight decay {sft['weight_decay']}"),
        ("stage 3: GRPO", f"{rl['steps']} steps, {rl['prompts_per_step']} prompts x "
         f"G={rl['group_size']}, "
         f"beta={rl['beta']}, epsilon={rl['clip_eps']}, mu={rl['mu']}, lr {rl['lr']}, "
         f"preset `{rl['preset']}`{', weights ' + str(rl['weights']) if rl['weights'] else ''}"),
        ("dtype (train compute / params)", f"{r['model']['dtype']} / {r['model']['param_dtype']}"),
        ("seed", str(r["seed"])),
    ]
    table = "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    full = yaml.safe_dump(r, sort_keys=False)
    return (f"## Training recipe\n\nExecTune: teacher-guided acceptance sampling, then supervised "
            f"fine-tuning on the accepted strategies, then structure-aware GRPO with the core in "
            f"the loop. Exported from `{f.source}`. Recipe from {f.recipe_origin}.\n\n{table}\n"
            f"<details><summary>Resolved config</summary>\n\n```yaml\n{full}```\n\n</details>\n")


def _data(d: Mapping) -> str:
    acc = d["chain_acceptance"]
    lo, hi = acc["ci"]
    lines = [
        "## Training data\n",
        f"{d['problems']} training problems, {d['chains']} teacher proposal chains, "
        f"{d['accepted']} accepted strategies covering {d['problems_with_accepted']} problems"
        f"{' (unfiltered: every well-formed strategy kept)' if d.get('unfiltered') else ''}.",
        f"Acceptance per chain: {100 * acc['rate']:.1f}% [95% CI {100 * lo:.1f}, {100 * hi:.1f}].",
    ]
    if d.get("reasons"):
        lines.append("Outcomes: " + ", ".join(f"{k} {v}" for k, v in d["reasons"].items()) + ".")
    if d.get("by_style"):
        styles = [f"{s} {100 * r['rate']:.0f}% ({r['k']}/{r['n']})"
                  for s, r in d["by_style"].items()]
        lines.append("Acceptance by teacher style: " + ", ".join(styles) + ".")
    return "\n".join(lines) + "\n"


def _metrics(metrics: Mapping[str, Mapping[str, tuple[int, float]]]) -> str:
    rows = [f"| {stage} | {k} | {v:.6g} | {step} |"
            for stage, m in metrics.items() for k, (step, v) in sorted(m.items())]
    return ("## Training metrics\n\nThe last logged value of each metric.\n\n"
            "| stage | metric | value | step |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")


def render(f: CardFacts) -> str:
    """README.md text: YAML front matter, then use, recipe, data, metrics and evaluation."""
    parts = [
        _front_matter(f),
        f"# {f.name}\n\nA **guide** model trained with exectune-jax (ExecTune). Given a problem, "
        "it writes a short strategy, numbered steps inside one `<strategy>...</strategy>` block "
        "and never the answer, that a cheaper black-box **core** model can execute. Weights are "
        f"stored in {f.dtype}.\n",
        _usage(f),
        _recipe(f),
    ]
    if f.data:
        parts.append(_data(f.data))
    if f.metrics:
        parts.append(_metrics(f.metrics))
    if f.eval_table:
        plots = "".join(f"\n![{Path(p).stem}]({p})\n" for p in f.plots)
        parts.append("## Evaluation\n\nHeld-out problems; every strategy executed by the core; "
                     f"intervals are 95% Wilson intervals.\n\n{f.eval_table}{plots}")
    parts.append(
        "## Limitations\n\nThe guide is tuned to the core model and task in the recipe: a "
        "different core may follow its strategies less well. Strategies are advice for a solver, "
        "not verified solutions.\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Reading a run (side effects: files under the run directory and the export)


RECIPE_FILES = ("config.yaml", "demo_config.yaml")  # resolved configs a run leaves behind


def recipe_config(cfg: Config, stage_dir: Path | None, run_dir: Path | None) -> tuple[Config, str]:
    """The config the run was trained with when it left one (a resolved config file in the stage
    or run directory), else the one `exectune export` was given."""
    for d in (stage_dir, run_dir):
        for name in RECIPE_FILES:
            if d is not None and (d / name).is_file():
                return load_config(d / name), f"`{d.name}/{name}` written by the run"
    return cfg, "the config given to `exectune export`"


def gather(cfg: Config, out: Path, *, name: str, dtype: str, source: str,
           stage_dir: Path | None, run_dir: Path | None,
           environ: Mapping[str, str] = os.environ) -> CardFacts:
    """Facts for the card of a guide exported to `out`; copies the evaluation plots into it."""
    recipe_cfg, origin = recipe_config(cfg, stage_dir, run_dir)
    secrets = set(secret_values(recipe_cfg, environ)) | set(secret_values(cfg, environ))
    stages = [recipe_cfg.sft.name, recipe_cfg.rl.name]
    if stage_dir is not None and stage_dir.name not in stages:
        stages.append(stage_dir.name)
    metrics, data, table, plots = {}, None, None, []
    if run_dir is not None:
        for stage in stages:
            found = last_metrics(run_dir / stage / "metrics.jsonl")
            if found:
                metrics[stage] = found
        data = read_json(layout.sample_summary(run_dir, recipe_cfg.sample.out))
        eval_dir = run_dir / recipe_cfg.eval.out
        if (eval_dir / "results.md").is_file():
            table = (eval_dir / "results.md").read_text()
            for png in sorted(eval_dir.glob("*.png")):
                (out / "plots").mkdir(exist_ok=True)
                (out / "plots" / png.name).write_bytes(png.read_bytes())
                plots.append(f"plots/{png.name}")
    return CardFacts(
        name=name, dtype=dtype, source=source, recipe=scrub(to_dict(recipe_cfg), secrets),
        recipe_origin=origin, base_model=base_model_id(recipe_cfg),
        instruction=guide_instruction(recipe_cfg), data=data, metrics=metrics,
        eval_table=table, plots=tuple(plots), license=cfg.export.license,
    )
