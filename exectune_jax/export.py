"""`exectune export`: ship a trained guide as a Hugging Face checkpoint, optionally to the Hub.

    exectune export runs/a runs/a/export --dtype bf16 [--push-to-hub user/guide] [--peft DIR]

SOURCE may be a run directory (the newest stage guide: rl/guide, else sft/guide, else their latest
checkpoints), a stage directory (its guide/, else its newest checkpoint), a guide (an HF
directory) or an orbax checkpoint directory of a stage (`<stage>/checkpoints` or one step in it).
A checkpoint holds parameters only, so it is restored into the architecture of a guide of the same
run (the stage's guide/, the configured init, the SFT guide or the demo base guide), whose
tokenizer it also takes.

The export is a full HF directory written by `models.hf.save` (config.json with the dtype,
safetensors, tokenizer with its chat template, generation_config.json) plus a README.md model card
(`model_card.py`) and `.exectune-export`, the marker that says export wrote the directory (package
version, source, time; never uploaded). It is written into a temporary sibling of OUT and renamed
into place, so a reader never sees half an export and a failed export leaves OUT as it was; every
file is checked for API key values before it is kept or uploaded.

OUT is replaced whole, so it must be new, empty or an earlier export (it holds the marker):
anything else (a downloaded base model, a folder of notes with a config.json) is refused unless
`--overwrite` is given. The same holds for the `--peft` directory.

A LoRA run's checkpoints hold only the adapters; their meta names the frozen base (an HF
directory), which gives the shapes and tokenizer and is loaded under them. The export then holds
the merged weights (what `transformers` loads), and `--peft DIR` also writes the adapters as a
PEFT adapter directory for that base (`peft.PeftModel.from_pretrained(base, DIR)`); with
`--peft`, a run or stage directory resolves to its newest checkpoint, since a stage's guide/
holds merged weights only.

Training stages may call `export_guide` every N steps for a loadable snapshot of the live model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from exectune_jax import __version__, model_card, parallel, preflight
from exectune_jax.config import Config, LoraConfig
from exectune_jax.errors import UserError
from exectune_jax.io import remove_path, swap_in_dir, temp_sibling, write_json_atomic, write_text_atomic
from exectune_jax.layout import BASE_GUIDE_DIR, CHECKPOINT_DIR, GUIDE_DIR
from exectune_jax.models import hf, lora
from exectune_jax.models.transformer import Transformer
from exectune_jax.train.checkpoint import Checkpointer

DTYPES = {"bf16": jnp.bfloat16, "fp32": jnp.float32}
CHECKPOINT_META = "meta"  # an item every checkpoint step holds (train/checkpoint.py)
TOKEN_ENV = "HF_TOKEN"
MARKER = ".exectune-export"  # in every directory export writes: the only kind it replaces
EXPECTED = ("expected a run directory (holding {stages}), a stage directory (holding guide/ or "
            "checkpoints/), a guide (an HF directory with config.json) or a checkpoint directory")


class ExportError(UserError):
    """A source that cannot be exported, or an export that cannot be written or pushed."""


# ---------------------------------------------------------------------------------------------
# What SOURCE points at


@dataclass(frozen=True)
class Source:
    """A guide directory, or one step of a checkpoint directory plus the guide giving its shape."""

    guide: Path  # HF directory: the weights when `step` is None, else architecture + tokenizer
    label: str  # how the card names what was exported, relative to the run directory
    stage_dir: Path | None = None
    run_dir: Path | None = None
    checkpoints: Path | None = None
    step: int | None = None
    lora: LoraConfig | None = None  # a LoRA checkpoint: `guide` is its frozen base


def _is_guide(path: Path) -> bool:
    return (path / hf.CONFIG_FILE).is_file()


def _steps(path: Path) -> list[int]:
    """Complete orbax step directories (digits only; orbax's temporary names are not)."""
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())


def _stages(cfg: Config) -> tuple[str, ...]:
    """Stage directories of a run, newest first."""
    return (cfg.rl.name, cfg.sft.name)


def _expected(cfg: Config) -> str:
    return EXPECTED.format(stages=" or ".join(f"{s}/" for s in _stages(cfg)))


def architecture_guide(cfg: Config, stage_dir: Path, run_dir: Path) -> Path | None:
    """The first guide of the run that fixes a checkpoint's shapes and tokenizer.

    Every stage fine-tunes the same architecture, so any of them will do; the stage's own guide
    comes first, then what the config says the run started from.
    """
    candidates = [stage_dir / GUIDE_DIR, cfg.rl.init, cfg.sft.init, cfg.model.path,
                  run_dir / cfg.sft.name / GUIDE_DIR, run_dir / BASE_GUIDE_DIR]
    return next((Path(c) for c in candidates if c and _is_guide(Path(c))), None)


def checkpoint_lora(checkpoints: Path, step: int) -> tuple[Path, LoraConfig] | None:
    """(frozen base, adapter spec) a LoRA checkpoint records in its meta; None for full weights."""
    ckpt = Checkpointer(checkpoints, keep=max(1, len(_steps(checkpoints))))
    try:
        _, meta = ckpt.restore(step, target={})
    finally:
        ckpt.close()
    spec = meta.get("lora")
    if not spec:
        return None
    base = Path(spec["base"])
    if not _is_guide(base):
        raise ExportError(f"{checkpoints / str(step)}: holds LoRA adapters for the base guide "
                          f"{base}, which is gone (no {hf.CONFIG_FILE}); restore that directory")
    # "dropout": absent from checkpoints written before adapters had it
    return base, LoraConfig(rank=spec["rank"], alpha=spec["alpha"],
                            dropout=spec.get("dropout", 0.0),
                            target_modules=list(spec["target_modules"]))


def with_adapters(src: Source) -> Source:
    """A checkpoint of LoRA adapters becomes a source whose guide is the base its meta names."""
    if src.step is None or src.lora is not None:
        return src
    found = checkpoint_lora(src.checkpoints, src.step)
    return src if found is None else dataclasses.replace(src, guide=found[0], lora=found[1])


def _checkpoint_source(cfg: Config, checkpoints: Path, step: int) -> Source:
    stage_dir = checkpoints.parent
    run_dir = stage_dir.parent
    label = f"{stage_dir.name}/{checkpoints.name}/{step}"
    arch = architecture_guide(cfg, stage_dir, run_dir)
    if arch is None:
        adapters = checkpoint_lora(checkpoints, step)
        if adapters is not None:
            return Source(adapters[0], label, stage_dir, run_dir, checkpoints, step, adapters[1])
        raise ExportError(
            f"{checkpoints}: a checkpoint holds parameters only, and no guide of this run gives "
            f"their shapes (looked for {stage_dir.name}/{GUIDE_DIR}, {cfg.sft.name}/{GUIDE_DIR}, "
            f"{BASE_GUIDE_DIR}, model.path, sft.init, rl.init); pass the training --config"
        )
    return Source(arch, label, stage_dir, run_dir, checkpoints, step)


def _stage_source(cfg: Config, stage_dir: Path) -> Source | None:
    if _is_guide(stage_dir / GUIDE_DIR):
        return Source(stage_dir / GUIDE_DIR, f"{stage_dir.name}/{GUIDE_DIR}", stage_dir,
                      stage_dir.parent)
    steps = _steps(stage_dir / CHECKPOINT_DIR)
    return _checkpoint_source(cfg, stage_dir / CHECKPOINT_DIR, steps[-1]) if steps else None


def resolve_source(cfg: Config, source: str | os.PathLike) -> Source:
    """Which guide or checkpoint SOURCE means; a one-line ExportError when it means none."""
    path = Path(source)
    if not path.is_dir():
        raise ExportError(f"{path}: no such directory; {_expected(cfg)}")
    if _is_guide(path):
        if path.name == GUIDE_DIR:  # a stage's hand-off: the card can report its run
            return Source(path, f"{path.parent.name}/{path.name}", path.parent, path.parent.parent)
        return Source(path, path.name)
    if path.name.isdigit() and (path / CHECKPOINT_META).is_dir():
        return _checkpoint_source(cfg, path.parent, int(path.name))
    steps = _steps(path)
    if steps:
        return _checkpoint_source(cfg, path, steps[-1])
    found = _stage_source(cfg, path)
    if found is not None:
        return found
    for stage in _stages(cfg):
        if (path / stage).is_dir():
            found = _stage_source(cfg, path / stage)
            if found is not None:
                return found
    raise ExportError(f"{path}: nothing to export here; {_expected(cfg)}")


# ---------------------------------------------------------------------------------------------
# Loading


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{path}: no usable tokenizer ({first}); a guide directory must hold "
                          "its tokenizer files (tokenizer.json, tokenizer_config.json)") from None


def restore_checkpoint(checkpoints: Path, step: int, arch: Path, mesh, dtype,
                       adapters: LoraConfig | None = None) -> Transformer:
    """Parameters of one checkpoint step in the shape of guide `arch`, as `dtype`, on `mesh`.

    With `adapters`, `arch` is the frozen base, loaded whole, and the checkpoint's LoRA
    adapters are restored onto it (the model keeps them unmerged).
    """
    if adapters is not None:
        model, _ = hf.load(arch, mesh=mesh, dtype=dtype)
        lora.apply(model, adapters, mesh=mesh)
        ckpt = Checkpointer(checkpoints, keep=max(1, len(_steps(checkpoints))))
        try:
            state, _ = ckpt.restore(step, target={"params": nnx.state(model, lora.TRAINABLE)},
                                    mesh=mesh)
        finally:
            ckpt.close()
        nnx.update(model, state["params"])
        return model
    mcfg = hf.read_config(arch)
    with parallel.use_mesh(mesh):
        abstract = nnx.eval_shape(lambda: Transformer(mcfg, rngs=nnx.Rngs(0), param_dtype=dtype))
    graphdef, params = nnx.split(abstract, nnx.Param)
    ckpt = Checkpointer(checkpoints, keep=max(1, len(_steps(checkpoints))))
    try:
        state, _ = ckpt.restore(step, target={"params": params}, mesh=mesh)
    finally:
        ckpt.close()
    return nnx.merge(graphdef, state["params"])


def load_source(cfg: Config, src: Source, dtype=jnp.float32) -> tuple[Transformer, Any]:
    """(model with `dtype` parameters, tokenizer) of a resolved source, sharded on `cfg.mesh`."""
    src = with_adapters(src)
    tokenizer = load_tokenizer(src.guide)
    mesh = parallel.make_mesh(cfg.mesh)
    if src.step is None:
        model, _ = hf.load(src.guide, mesh=mesh, dtype=dtype)
    else:
        model = restore_checkpoint(src.checkpoints, src.step, src.guide, mesh, dtype, src.lora)
    return model, tokenizer


# ---------------------------------------------------------------------------------------------
# Writing


def cast(model: Transformer, dtype) -> Transformer:
    """A copy of `model` (adapters merged) whose parameters are stored in `dtype` (what hf.save
    writes)."""
    graphdef, params = nnx.split(lora.merged(model), nnx.Param)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x.astype(dtype), params))


def _check_out(out: Path, overwrite: bool, flag: str = "") -> None:
    """OUT is replaced whole, so it must be new, empty, an earlier export, or given up with
    --overwrite; `flag` names the option OUT came from in the message."""
    if overwrite or not (out.exists() or out.is_symlink()):
        return
    if out.is_dir() and (not any(out.iterdir()) or (out / MARKER).is_file()):
        return
    raise ExportError(f"{flag}{out}: exists and was not written by exectune export (no {MARKER} "
                      "in it); the export replaces its directory whole, so give a new or empty "
                      "directory, or pass --overwrite to replace it")


def _dtype_name(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return jnp.dtype(DTYPES[dtype]).name


def export_guide(model: Transformer, cfg: Config, tokenizer, out_dir: str | os.PathLike,
                 dtype: str = "bf16", *, stage: str | None = None) -> Path:
    """Write `model` (any dtype, any mesh) and its tokenizer to `out_dir` as an HF checkpoint
    in `dtype` ("bf16" | "fp32") with a model card; returns `out_dir`.

    For snapshots during training: `stage` names the stage directory under `cfg.run_dir` whose
    metrics the card reports (the calling stage's own name). Every process of a multi-process
    run must call it; process 0 writes.
    """
    run_dir = Path(cfg.run_dir)
    return write_export(model, tokenizer, out_dir, dtype, cfg,
                        stage_dir=run_dir / stage if stage else None,
                        run_dir=run_dir if run_dir.is_dir() else None, label=stage or "model")


def write_export(model: Transformer, tokenizer, out_dir: str | os.PathLike, dtype: str,
                 cfg: Config, *, stage_dir: Path | None, run_dir: Path | None,
                 label: str, repo_id: str | None = None, overwrite: bool = False) -> Path:
    """hf.save in `dtype` + model card, written beside `out_dir` and renamed into place."""
    out = Path(out_dir)
    name = _dtype_name(dtype)
    _check_out(out, overwrite)
    model = cast(model, DTYPES[dtype])
    if jax.process_index() != 0:
        hf.save(model, model.cfg, out)  # this process's part of gathering the weights; no writes
        return out

    def write(tmp: Path) -> None:
        hf.save(model, model.cfg, tmp, tokenizer=tokenizer)
        facts = model_card.gather(cfg, tmp, name=repo_id or out.name, dtype=name, source=label,
                                  stage_dir=stage_dir, run_dir=run_dir)
        write_text_atomic(tmp / "README.md", model_card.render(facts))

    return _publish(out, cfg, write, source=label, overwrite=overwrite)


def _publish(out: Path, cfg: Config, write: Callable[[Path], None], *, source: str,
             overwrite: bool, flag: str = "") -> Path:
    """`write(tmp)` into a temporary sibling of `out`, add the marker, refuse the result if it
    holds a secret, then rename it into place; on any failure the temporary directory goes and
    `out` stays as it was."""
    try:
        with _staged(out) as tmp:
            write(tmp)
            write_json_atomic(tmp / MARKER, {
                "written_by": "exectune export", "version": __version__, "source": source,
                "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")})
            _refuse_secrets(tmp, cfg)
            _check_out(out, overwrite, flag)  # again: it may have been filled meanwhile
            old = swap_in_dir(tmp, out)
    except OSError as e:
        raise ExportError(f"{flag}{out}: cannot be written ({e.strerror or e}); nothing there "
                          "was changed") from None
    if old is not None:
        try:
            remove_path(old)
        except OSError as e:
            raise ExportError(f"{flag}{out}: written, but what it replaced could not be removed "
                              f"from {old} ({e.strerror or e}); delete that directory") from None
    return out


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A new temporary sibling of `out` to write into, removed again if the block fails."""
    tmp = temp_sibling(out)
    remove_path(tmp)  # left by a killed process of the same id
    try:
        yield tmp
    except BaseException:
        remove_path(tmp)
        raise


def _refuse_secrets(directory: Path, cfg: Config) -> None:
    hits = model_card.find_secrets(directory, model_card.secret_values(cfg))
    if hits:
        file, env = hits[0]
        raise ExportError(f"{file.name}: would contain the value of ${env}; nothing was exported "
                          "(remove the key from the run's files and config, which must hold "
                          "only the variable's name)")


def export(cfg: Config, source: str | os.PathLike, out: str | os.PathLike,
           dtype: str = "bf16", *, repo_id: str | None = None,
           peft: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Resolve SOURCE, load it, write the HF export to OUT; returns OUT.

    `repo_id` is the Hub name the model card's usage example loads (default: OUT's name).
    `peft` is a directory for the adapters of a LoRA checkpoint in PEFT's format. `overwrite`
    replaces OUT and `peft` even where export did not write them.
    """
    src = with_adapters(resolve_source(cfg, source))
    if peft is not None:
        src = _adapter_source(cfg, src, source)
        _check_out(Path(peft), overwrite, "--peft ")
    _dtype_name(dtype)
    _check_out(Path(out), overwrite)
    model, tokenizer = load_source(cfg, src, DTYPES[dtype])
    path = write_export(model, tokenizer, out, dtype, cfg, stage_dir=src.stage_dir,
                        run_dir=src.run_dir, label=src.label, repo_id=repo_id,
                        overwrite=overwrite)
    if peft is not None:
        write_peft(model, peft, src.guide, cfg, source=src.label, overwrite=overwrite)
    return path


def _adapter_source(cfg: Config, src: Source, source: str | os.PathLike) -> Source:
    """A LoRA checkpoint for --peft: a stage's guide holds merged weights, its checkpoints the
    adapters."""
    if src.step is None and src.stage_dir is not None:
        steps = _steps(src.stage_dir / CHECKPOINT_DIR)
        if steps:
            src = with_adapters(_checkpoint_source(cfg, src.stage_dir / CHECKPOINT_DIR, steps[-1]))
    if src.lora is None:
        raise ExportError(f"--peft: {source} holds no LoRA adapters (a guide holds merged "
                          "weights; a full fine-tune has no adapters); give the checkpoints of a "
                          "stage trained with model.lora.rank > 0")
    return src


def write_peft(model: Transformer, out_dir: str | os.PathLike, base: Path, cfg: Config, *,
               source: str, overwrite: bool = False) -> Path:
    """The adapters of `model` as a PEFT directory for `base`, written beside and renamed into
    place."""
    out = Path(out_dir)
    if jax.process_index() != 0:
        lora.save_peft(model, out, str(base.resolve()))  # this process's part of the gather
        return out
    return _publish(out, cfg, lambda tmp: lora.save_peft(model, tmp, str(base.resolve())),
                    source=source, overwrite=overwrite, flag="--peft ")


# ---------------------------------------------------------------------------------------------
# Hub


def hub_token(repo_id: str) -> str:
    """$HF_TOKEN, else the token `hf auth login` stored (huggingface_hub's standard lookup)."""
    from huggingface_hub import get_token

    token = os.environ.get(TOKEN_ENV) or get_token()
    if not token:
        raise ExportError(f"--push-to-hub {repo_id}: no Hub token; log in with `hf auth login` "
                          f"(or huggingface-cli login), or set ${TOKEN_ENV} to a token with write "
                          "access (it is never written anywhere)")
    return token


def push(out: str | os.PathLike, repo_id: str, *, token: str | None = None,
         endpoint: str | None = None, private: bool = False) -> str:
    """Create `repo_id` if needed and upload the export; returns the commit URL.

    The token comes from HF_TOKEN or the stored Hub login unless given; `endpoint` is the Hub
    URL (default: huggingface_hub's own).
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token or hub_token(repo_id))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(out), repo_id=repo_id,
                                 commit_message="Upload ExecTune guide", ignore_patterns=[MARKER])
    except Exception as e:  # HTTP, auth and validation errors all mean the upload failed
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"--push-to-hub {repo_id}: upload failed ({type(e).__name__}: "
                          f"{first}); the export in {out} was kept") from None
    return str(getattr(info, "commit_url", info))


def run(cfg: Config, source: str, out: str, push_to_hub: str | None = None,
        dtype: str = "bf16", peft: str | None = None, overwrite: bool = False) -> int:
    preflight.check(cfg, "export", out=out)
    if push_to_hub:
        hub_token(push_to_hub)  # a missing token fails before the export's minutes of work
    path = export(cfg, source, out, dtype, repo_id=push_to_hub, peft=peft, overwrite=overwrite)
    print(f"exectune export: {dtype} guide at {path}")
    if peft:
        print(f"exectune export: PEFT adapter at {peft}")
    if push_to_hub:
        print(f"exectune export: pushed to {push_to_hub}: {push(path, push_to_hub)}")
    return 0
