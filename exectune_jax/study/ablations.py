"""The study's ablations, trained in each seed's run dir after its demo and scored by one more
eval stage (run_dir/seed-N/ablations/) beside every guide of the demo (whose core calls replay
from the call cache):

- `outcome_rl_from_sft`: GRPO from the `exectune_sft` guide with the outcome term alone (format,
  improve, harm, leak and cost weighted 0; the strategy prompt and its format gate kept): against
  `exectune`, what the structure-aware reward terms add from the same starting point;
- `exectune_rl_from_base`: ExecTune's RL from the base guide, no SFT: what the
  acceptance-filtered SFT stage adds;
- `sft_answer_only`: SFT on strategies accepted on the answer alone, the paper's acceptance
  (`sample.require_followed=false`, no `sample.max_cost_vs_core`), where the demo's acceptance
  also requires that the follow check says the core carried the strategy out and that its
  execution cost at most the core alone: against `exectune_sft`, what checking executability
  and cost, not only the answer, gives the SFT stage.

They are aggregated like the main rows, with their own McNemar tests against `exectune`. A seed
whose ablation eval lacks one of them trains the missing ones; finished stages resume as
finished.
"""

from __future__ import annotations

import json
from pathlib import Path

from exectune_jax import layout
from exectune_jax.config import Config
from exectune_jax.demo.recipe import prepare, with_values
from exectune_jax.demo.runner import run_phases
from exectune_jax.layout import GUIDE_DIR

OUTCOME_ONLY = {"format": 0.0, "improve": 0.0, "harm": 0.0, "leak": 0.0, "cost": 0.0}
ABLATIONS = "ablations"  # the ablation eval's directory under each seed's run dir
ABLATION_PHASES = ((("rl_outcome",), ("rl_from_base",), ("sample_answer_only", "sft_answer_only")),
                   (("eval_ablations",),))
ABLATION_COMMANDS = {"rl_outcome": ("rl",), "rl_from_base": ("rl",), "sample_answer_only": ("sample",),
                     "sft_answer_only": ("sft",), "eval_ablations": ("eval",)}
ABLATION_GUIDES = {"outcome_rl_from_sft": f"rl_outcome/{GUIDE_DIR}",  # method -> guide, as eval.guides
                   "exectune_rl_from_base": f"rl_from_base/{GUIDE_DIR}",
                   "sft_answer_only": f"sft_answer_only/{GUIDE_DIR}"}
# acceptance of ablation (c): a right answer is enough (no follow check, no cost bound)
ANSWER_ONLY = {"sample.out": "sample_answer_only", "sample.require_followed": False,
               "sample.max_cost_vs_core": None}


def ablation_configs(cfg: Config) -> dict[str, Config]:
    """The ablation stages' configs, inside one seed's run dir (its demo's guides as starts)."""
    run_dir = Path(cfg.run_dir)
    return {
        "rl_outcome": with_values(cfg, {"rl.name": "rl_outcome", "rl.preset": "exectune",
                                        "rl.weights": OUTCOME_ONLY,
                                        "rl.init": str(layout.guide(run_dir, "sft"))}),
        "rl_from_base": with_values(cfg, {"rl.name": "rl_from_base", "rl.preset": "exectune",
                                          "rl.init": str(layout.base_guide(run_dir))}),
        "sample_answer_only": with_values(cfg, ANSWER_ONLY),
        # SFT reads the accepted strategies of its config's sample stage (layout.sft_data)
        "sft_answer_only": with_values(cfg, {**ANSWER_ONLY, "sft.name": "sft_answer_only"}),
        "eval_ablations": with_values(cfg, {
            "eval.out": ABLATIONS, "eval.guides": {**cfg.eval.guides, **ABLATION_GUIDES},
            "eval.core_strong": False}),
    }


def ablations_complete(results_json: Path) -> bool:
    """Whether a seed's ablation eval holds a row for every ablation of this version."""
    if not results_json.exists():
        return False
    methods = {r["method"] for r in json.loads(results_json.read_text())["rows"]}
    return set(ABLATION_GUIDES) <= methods


def run_ablations(cfg: Config, out: Path, quick: bool) -> bool:
    """One seed's ablation stages, against the sim server as its demo ran them."""
    cfg = prepare(cfg, str(out), quick)
    return run_phases(cfg, ABLATION_PHASES, ablation_configs, ABLATION_COMMANDS) is not None
