"""`exectune import`: a GGUF file or an HF model directory -> an HF directory our loader reads.

    exectune import SmolLM2-135M-Instruct.Q4_1.gguf guides/smollm2

The output is what `models.hf.load` and the stages' `AutoTokenizer.from_pretrained` read:
config.json, model.safetensors, generation_config.json and the tokenizer files with the chat
template. Reading goes through transformers' own loaders, so the output matches what
`from_pretrained` gives: a GGUF file is dequantized to float32; a directory keeps its dtype.

transformers refuses `save_pretrained` on a model it loaded from GGUF (it counts as quantized),
though the loaded weights are plain tensors: the weights move into a model of the same class
built from the config without the quantization entry, which saves normally.

The directory is written beside OUT_DIR and renamed onto it, so OUT_DIR is never half written;
an existing non-empty OUT_DIR is refused, never merged into or replaced.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from exectune_jax.errors import UserError
from exectune_jax.io import claim_dir, temp_sibling
from exectune_jax.models import hf
from exectune_jax.models.architecture import ModelConfig

GGUF_SUFFIX = ".gguf"
EXTRA = "import"
# transformers' GGUF reader needs gguf and accelerate; every from_pretrained here needs torch
GGUF_PACKAGES = ("gguf", "accelerate", "torch")
DIRECTORY_PACKAGES = ("torch",)


class ImportCheckpointError(UserError):
    """A source that cannot be imported, or an OUT_DIR that cannot take it."""


def run(_cfg: object, source: str, out: str) -> int:
    """The CLI entry (the run config is not used): import `source` into `out`."""
    out_dir = import_checkpoint(source, out)
    print(f"exectune import: wrote {out_dir}")
    return 0


def import_checkpoint(source: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Writes the HF directory for `source` (a .gguf file or an HF model directory) at `out`."""
    src, out = Path(source), Path(out)
    _check_out(out)
    loader = _Loader(src)
    loader.check_config()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process of the same id
    tmp.mkdir()
    try:
        loader.model().save_pretrained(tmp)
        loader.tokenizer().save_pretrained(tmp)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_out(out: Path) -> None:
    if out.is_dir() and any(out.iterdir()):
        raise ImportCheckpointError(
            f"{out}: directory is not empty; import into a new or empty directory")
    if out.exists() and not out.is_dir():
        raise ImportCheckpointError(f"{out}: exists and is not a directory; give a new directory")


def _publish(tmp: Path, out: Path) -> None:
    """Renames the finished `tmp` onto `out`; an `out` filled meanwhile is left as it is."""
    try:
        claimed = claim_dir(tmp, out)
    except OSError as e:
        raise ImportCheckpointError(
            f"{out}: cannot be written ({e.strerror}); it was left as it was") from None
    if not claimed:
        raise ImportCheckpointError(f"{out}: filled by another process meanwhile; it was left as it was")


class _Loader:
    """transformers' config, model and tokenizer loaders with the arguments `src` needs."""

    def __init__(self, src: Path):
        if src.is_file() and src.suffix.lower() == GGUF_SUFFIX:
            self.where, self.kwargs = str(src.parent), {"gguf_file": src.name}
            self.dtype = "float32"
            _require(GGUF_PACKAGES, "reading a GGUF file")
        elif src.is_dir():
            if not (src / hf.CONFIG_FILE).is_file():
                raise ImportCheckpointError(f"{src}: no {hf.CONFIG_FILE}; expected a {GGUF_SUFFIX} "
                                            "file or an HF model directory")
            self.where, self.kwargs = str(src), {}
            self.dtype = "auto"
            _require(DIRECTORY_PACKAGES, "reading an HF model directory")
        elif src.exists():
            raise ImportCheckpointError(
                f"{src}: not a {GGUF_SUFFIX} file or an HF model directory")
        else:
            raise ImportCheckpointError(f"{src}: not found")
        self.src = src

    def check_config(self) -> None:
        """Refuses an architecture our Transformer lacks before any weights are read."""
        from transformers import AutoConfig

        config = self._read("config", lambda: AutoConfig.from_pretrained(self.where, **self.kwargs))
        try:
            ModelConfig.from_hf(config.to_dict())
        except KeyError as e:
            raise ImportCheckpointError(f"{self.src}: its config has no {e.args[0]!r}") from None
        except UserError as e:
            raise ImportCheckpointError(f"{self.src}: {e}") from None

    def model(self):
        from transformers import AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        model = self._read("weights", lambda: AutoModelForCausalLM.from_pretrained(
            self.where, dtype=self.dtype, **self.kwargs))
        if getattr(model.config, "quantization_config", None) is None:
            return model
        config = model.config
        del config.quantization_config
        with no_init_weights():  # every weight is overwritten by the state dict below
            plain = type(model)(config)
        plain.tie_weights()  # skipped with the initialisation; untied, a tied head is saved twice
        plain.load_state_dict(model.state_dict())
        plain.generation_config = model.generation_config
        return plain.eval()

    def tokenizer(self):
        from transformers import AutoTokenizer

        return self._read("tokenizer", lambda: AutoTokenizer.from_pretrained(
            self.where, **self.kwargs))

    def _read(self, what: str, load):
        try:
            return load()
        except (OSError, ValueError, KeyError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ImportCheckpointError(f"{self.src}: cannot read its {what} ({reason})") from None


def _require(modules: tuple[str, ...], purpose: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportCheckpointError(
            f"{purpose} needs {', '.join(missing)}: pip install 'exectune-jax[{EXTRA}]'")
