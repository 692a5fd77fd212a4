"""The base guide's competence gate (docs/world.md), measured on the arith validation split.

The guide writes its advice greedily for each validation problem (the advisor prompt by default:
the base guide is where the advisor rows start), and `sim/competence.py` measures it: the share of
its advice sentences that use only the problem's numbers or results of earlier sentences, and how
often its advice, carried out to the end as written, is right, beside the core alone.

    python bench/base_guide_competence.py GUIDE_DIR [--problems N] [--prompt advisor|guide]
        [--max-new-tokens 96] [--batch-size 32] [--json OUT] [key=value ...]

`key=value` names world values as `sim.world` does (the core alone is measured in that world).
The last line is `competence: grounded <share>, right followed to the end <acc> vs core alone
<acc>: the gate holds|fails`; the exit status is 0 when it holds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("guide_dir", type=Path)
    parser.add_argument("--problems", type=int, default=500, help="the first N validation problems")
    parser.add_argument("--prompt", choices=("advisor", "guide"), default="advisor")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="as eval.max_new_tokens")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("world", nargs="*", help="world values, key=value")
    args = parser.parse_intermixed_args()  # world values may follow the options

    from exectune_jax.data import tasks
    from exectune_jax.evaluate import guide_texts
    from exectune_jax.io import write_json_atomic
    from exectune_jax.runtime import prepare_runtime
    from exectune_jax.sim import competence
    from exectune_jax.world import world_from

    prepare_runtime()
    overrides = {k: yaml.safe_load(v) for k, _, v in (a.partition("=") for a in args.world)}
    world = world_from(overrides)
    task = tasks.get("arith")
    with tasks.reading_as("competence"):
        problems = task.problems("validation")[:args.problems]
    texts, generated = guide_texts(args.guide_dir, problems, task.family, advisor=args.prompt == "advisor",
                                   max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    result = {"guide_dir": str(args.guide_dir), "prompt": args.prompt, "world": world.summary(),
              "overrides": overrides, "guide_tokens": generated,
              **competence.measure(problems, texts, task, world),
              "examples": [{"problem": p.id, "advice": t} for p, t in zip(problems[:3], texts)]}
    if args.json:
        write_json_atomic(args.json, result)
    print(json.dumps(result, indent=2))
    print(f"competence: grounded {result['grounded_share']:.3f} ({result['grounded_sentences']} of "
          f"{result['sentences']} sentences), right followed to the end "
          f"{result['right_followed_to_the_end']:.3f} vs core alone {result['core_alone']:.3f} "
          f"({result['problems']} validation problems): the gate {'holds' if result['gate'] else 'fails'}")
    return 0 if result["gate"] else 1


if __name__ == "__main__":
    sys.exit(main())
