"""A tiny, fully deterministic training run shared by the parallelism and checkpoint tests.

Importable (in-process tests) and runnable as a script (fresh-process and multi-process tests):

    python tests/tiny_training.py --mesh 2,2,2 --steps 4 --out losses.json \
        [--ckpt DIR --save-at 2] [--resume]

writes OUT/process<i>.json with the losses and the next batch the data iterator would give.

As a script it joins a multi-process run when JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID are set, each process loading only its own rows of every global batch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()

import grain
import jax
import numpy as np
import optax
from flax import nnx

from exectune_jax import parallel
from exectune_jax.models.architecture import ModelConfig
from exectune_jax.models.transformer import Transformer
from exectune_jax.train.checkpoint import Checkpointer

CFG = ModelConfig(
    model_type="llama", vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=2,
    num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=64,
)
BATCH, SEQ = 8, 17  # 16 predicted tokens per row
LEARNING_RATE = 3e-3


def dataset(seed: int = 0) -> grain.IterDataset:
    """Shuffled random token rows in batches: the iterator state matters for resume."""
    rows = np.random.default_rng(seed).integers(0, CFG.vocab_size, (96, SEQ), dtype=np.int32)
    ds = grain.MapDataset.source(list(rows)).shuffle(seed=seed).repeat().batch(BATCH)
    return ds.to_iter_dataset()


def build(mesh) -> tuple[Transformer, nnx.Optimizer]:
    """Model and AdamW state, created directly sharded on `mesh` from the same seed."""

    def factory():
        model = Transformer(CFG, rngs=nnx.Rngs(0))
        return model, nnx.Optimizer(model, optax.adamw(LEARNING_RATE), wrt=nnx.Param)

    return parallel.create_sharded(factory, mesh)


@nnx.jit
def train_step(model: Transformer, opt: nnx.Optimizer, tokens: jax.Array) -> jax.Array:
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    positions = jax.numpy.broadcast_to(jax.numpy.arange(inputs.shape[1]), inputs.shape)

    def loss_fn(m):
        logits = m(inputs, positions)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss


def next_global_batch(it, mesh) -> jax.Array:
    """Every process reads the full batch from its iterator and keeps only its own rows."""
    rows = np.asarray(next(it))
    return parallel.global_batch(rows[parallel.local_batch_slice(mesh, BATCH)], mesh)


def train(model, opt, it, mesh, steps: int) -> list[float]:
    losses = []
    with parallel.use_mesh(mesh):
        for _ in range(steps):
            losses.append(float(train_step(model, opt, next_global_batch(it, mesh))))
    return losses


def checkpoint_state(model, opt) -> dict:
    return {"params": nnx.state(model, nnx.Param), "opt": nnx.state(opt)}


def load_into(model, opt, state: dict) -> None:
    nnx.update(model, state["params"])
    nnx.update(opt, state["opt"])


def _main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mesh", default="1,1,1")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt")
    ap.add_argument("--save-at", type=int)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    parallel.init_distributed()
    mesh = parallel.make_mesh(*map(int, args.mesh.split(",")))
    model, opt = build(mesh)
    it = iter(dataset())
    ckpt = Checkpointer(args.ckpt) if args.ckpt else None
    start = 0
    if args.resume:
        state, meta = ckpt.restore(target=checkpoint_state(model, opt), data_iter=it)
        load_into(model, opt, state)
        start = meta["step"]
    losses = []
    for step in range(start, args.steps):
        losses += train(model, opt, it, mesh, 1)
        if ckpt is not None and step + 1 == args.save_at:
            ckpt.save(step + 1, state=checkpoint_state(model, opt), data_iter=it,
                      meta={"step": step + 1})
    if ckpt is not None:
        ckpt.close()
    result = {"losses": losses, "process": jax.process_index(), "processes": jax.process_count(),
              "devices": jax.device_count(), "next_batch": np.asarray(next(it)).tolist()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"process{jax.process_index()}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    _main()
