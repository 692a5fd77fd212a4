"""Does the advisor row's training reward move with its advice?

An RL stage logs per-step means (reward, α), not what GRPO learns from: which groups of G
samples for one problem had any reward spread (the only groups with a non-zero advantage), and
whether, inside a group, the samples the core got right were the ones whose advice it carried
out further. This script measures both for a finished run without touching it:

1. it replays the stage into a scratch dir from the stage's own config.yaml (same seeds, same
   starting guide, the same world: a fresh sim server answers the core calls), recording every
   sample's problem, advice and reward, and checks the replay's per-step mean reward against
   the run's metrics.jsonl (a replay that differs is reported); the samples are kept in the
   scratch dir's samples.jsonl, and a scratch dir that has them is not replayed again;
2. for each sample it asks the simulated core of that world for its ground truth on the same
   request: how many of the advice's operations it carried out before it went on alone
   (`SimCore.respond(...).carried_out`; the reply must be the one the run scored), and whether
   what it carried out was on track (every result one of the problem's true amounts).

    python bench/advisor_reward.py runs/base0 [--stage advisor_rl] [--scratch DIR] [--json OUT]
                                              [--plot PNG]

The last line is `advisor_reward: <share> of groups with reward spread; in them the right answers'
advice was carried out <mean difference> operations vs the wrong answers'`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import tempfile
from collections import Counter, defaultdict
from pathlib import Path


def replay_config(run_dir: Path, stage: str, scratch: Path):
    """The stage's config, writing to `scratch` and talking to a sim server of its own."""
    from exectune_jax.config import SIM_URL, load_config
    from exectune_jax.demo.recipe import with_values

    cfg = load_config(run_dir / stage / "config.yaml")
    endpoints = {f"api.{n}": dataclasses.replace(getattr(cfg.api, n), base_url=SIM_URL)
                 for n in ("core", "teacher", "judge", "core_strong") if getattr(cfg.api, n)}
    return with_values(cfg, {**endpoints, "run_dir": str(scratch), "sim.truth_log": None,
                             "metrics.progress": False, "metrics.tensorboard": False,
                             "metrics.wandb": None})


def replay(cfg, out: Path) -> None:
    """Every sample of the stage's rollouts, replayed, one JSON line each in `out`: step, group,
    problem id, advice, reward, and the core's reply the reward was scored on."""
    from exectune_jax.runtime import prepare_runtime
    from exectune_jax.data import tasks
    from exectune_jax.sim import serving
    from exectune_jax.train import grpo

    prepare_runtime()
    samples: list[dict] = []
    record = grpo.step_record

    def capture(t, rollout, labelled, stats, spec, timing):
        for i, text in enumerate(rollout.texts):
            o = labelled.outcomes[i]
            samples.append({"step": t + 1, "group": [t, i // rollout.group_size],
                            "problem": rollout.problem_of(i).id, "advice": text,
                            "reward": labelled.rewards[i], "response": o.response if o else None})
        return record(t, rollout, labelled, stats, spec, timing)

    grpo.step_record = capture
    try:
        with tasks.reading_as("rl"), serving(cfg) as served:
            grpo.train(served)
    finally:
        grpo.step_record = record
    out.write_text("".join(json.dumps(s) + "\n" for s in samples))


def ground_truth(samples: list[dict], cfg) -> None:
    """Each sample's `carried_out` and `on_track`, from the simulated core of the run's world."""
    from exectune_jax.data import tasks
    from exectune_jax.data.tasks.arith import parse_problem, run_program
    from exectune_jax.gcop.prompts import core_messages
    from exectune_jax.gcop.trace import number, read_lines
    from exectune_jax.sim import models
    from exectune_jax.sim.server import model_seed
    from exectune_jax.world import world_from

    core = models.get(cfg.api.core.model, world_from(cfg.sim.world))
    temperature = cfg.api.core.temperature
    with tasks.reading_as("rl"):
        problems = {p.id: p for p in tasks.get(cfg.task.name, **cfg.task.options).problems("train")}
    for s in samples:
        problem = problems[s["problem"]]
        reply = core.respond(core_messages(problem, "math", s["advice"]), temperature=temperature,
                             seed=model_seed(cfg.sim.seed, 0, temperature))
        if reply.text != s["response"]:
            raise SystemExit(f"step {s['step']}: the core's reply differs from the one the run scored")
        program = parse_problem(problem.prompt)
        # what it carried out is the reply's first `Step k: a op b = r.` lines
        done = read_lines(reply.text)[: reply.carried_out] if reply.carried_out else []
        results = [number(body.rsplit("= ", 1)[1].rstrip(".")) for _, body in done]
        s.update(carried_out=reply.carried_out, ops=len(program.ops),
                 on_track=all(r in set(run_program(program)) for r in results))


def analyse(samples: list[dict], metrics: list[dict]) -> dict:
    failed = sum(s["reward"] is None for s in samples)  # failed calls: no reward, no advantage
    samples = [s for s in samples if s["reward"] is not None]
    by_step: dict[int, list[dict]] = defaultdict(list)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for s in samples:
        by_step[s["step"]].append(s)
        groups[tuple(s["group"])].append(s)
    logged = {m["step"]: m["reward"] for m in metrics}
    replayed = {t: statistics.fmean(s["reward"] for s in v) for t, v in by_step.items()}
    mismatch = [t for t in replayed if abs(replayed[t] - logged.get(t, float("nan"))) > 1e-9]
    spread = {g: v for g, v in groups.items() if len({s["reward"] for s in v}) > 1}
    spread_by_step = defaultdict(int)
    for (t, _), _v in spread.items():
        spread_by_step[t + 1] += 1
    # inside a group with spread: the right answers' mean carried-out operations minus the wrong ones'
    gaps, more, same, fewer = [], 0, 0, 0
    for v in spread.values():
        won = statistics.fmean(s["carried_out"] for s in v if s["reward"] > 0)
        lost = statistics.fmean(s["carried_out"] for s in v if s["reward"] <= 0)
        gaps.append(won - lost)
        more, same, fewer = more + (won > lost), same + (won == lost), fewer + (won < lost)
    varied = [v for v in spread.values() if len({s["carried_out"] for s in v}) > 1]
    ignored = [v for v in spread.values() if not any(s["carried_out"] for s in v)]
    # why the core carried out none of an advice: the reason its reply gives, step numbers dropped
    why = Counter(re.sub(r"step \d+", "step k", s["response"].split("(", 1)[1].split("), so")[0])
                  for s in samples if not s["carried_out"] and s["response"].startswith("I cannot follow"))
    by_k: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        by_k[str(min(s["carried_out"], 3)) + ("+" if s["carried_out"] >= 3 else "")].append(s["reward"])
    off_track = [s for s in samples if s["carried_out"] and not s["on_track"]]
    on_track = [s for s in samples if s["carried_out"] and s["on_track"]]
    return {
        "samples": len(samples), "failed_calls": failed, "groups": len(groups),
        "replay_matches_metrics": not mismatch,
        "steps_that_differ": mismatch,
        "groups_with_spread": len(spread), "share_with_spread": len(spread) / len(groups),
        "groups_with_spread_per_step": [spread_by_step.get(t, 0) for t in sorted(by_step)],
        "groups_per_step": len(groups) // len(by_step),
        "spread_groups_where_carried_out_varies": len(varied),
        "spread_groups_where_no_advice_was_carried_out": len(ignored),
        "winner_minus_loser_carried_out": {"mean": statistics.fmean(gaps) if gaps else None,
                                           "winners_more": more, "equal": same, "winners_fewer": fewer},
        "reward_by_carried_out": {k: {"n": len(v), "mean_reward": statistics.fmean(v)}
                                  for k, v in sorted(by_k.items())},
        "carried_out_mean_by_step": [statistics.fmean(s["carried_out"] for s in by_step[t])
                                     for t in sorted(by_step)],
        "share_carried_out_any": sum(s["carried_out"] > 0 for s in samples) / len(samples),
        "why_none_carried_out": dict(why.most_common()),
        "off_track_after_carrying_out": {"n": len(off_track),
                                         "mean_reward": statistics.fmean(s["reward"] for s in off_track)
                                         if off_track else None},
        "on_track_after_carrying_out": {"n": len(on_track),
                                        "mean_reward": statistics.fmean(s["reward"] for s in on_track)
                                        if on_track else None},
        "share_carried_out_any_per_step": [statistics.fmean(s["carried_out"] > 0 for s in by_step[t])
                                           for t in sorted(by_step)],
        "reward_per_step": [m["reward"] for m in metrics],
        "alpha_per_step": [m["executability"] for m in metrics],
    }


def plot(result: dict, path: Path) -> None:
    """Per RL step: mean reward, α, the share of groups with reward spread and the share of
    samples whose advice the core carried out at all."""
    from exectune_jax.plots import STYLE, plt

    steps = range(1, len(result["reward_per_step"]) + 1)
    spread = [n / result["groups_per_step"] for n in result["groups_with_spread_per_step"]]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8, 5.6), dpi=110)
        ax.plot(steps, result["reward_per_step"], linewidth=2, label="mean reward (= accuracy)")
        ax.plot(steps, spread, linewidth=1.6, label="groups with reward spread (advantage ≠ 0)")
        ax.plot(steps, result["share_carried_out_any_per_step"], linewidth=1.6,
                label="samples whose advice the core carried out at all")
        ax.plot(steps, result["alpha_per_step"], linewidth=1.6, label="executability α")
        ax.set_xlabel("RL step")
        ax.set_ylabel("fraction")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("Outcome-only RL from the base guide (advisor_rl)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=9.5)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--stage", default="advisor_rl")
    parser.add_argument("--scratch", type=Path, default=None, help="replay dir (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--plot", type=Path, default=None, help="and the per-step curves here")
    args = parser.parse_args()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="advisor_reward_"))
    cfg = replay_config(args.run_dir, args.stage, scratch)
    kept = scratch / "samples.jsonl"
    if not kept.exists():
        replay(cfg, kept)
    samples = [json.loads(line) for line in kept.read_text().splitlines() if line.strip()]
    ground_truth(samples, cfg)
    logged = (args.run_dir / args.stage / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in logged if line.strip()]
    result = analyse(samples, metrics)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result, indent=2))
    gap = result["winner_minus_loser_carried_out"]["mean"]
    print(f"advisor_reward: {result['share_with_spread']:.1%} of groups with reward spread; in them "
          f"the right answers' advice was carried out {'n/a' if gap is None else f'{gap:+.2f}'} "
          "operations vs the wrong answers'")
    return 0 if result["replay_matches_metrics"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
