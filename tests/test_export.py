"""exectune export: HF parity of the exported guide, bf16, secrets, checkpoints, sources, push."""

import base64
import errno
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import yaml
from flax import nnx
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from exectune_jax import cli, export, model_card
from exectune_jax.config import dump, load_config
from exectune_jax.data import tasks
from exectune_jax.data.pipeline import encode_prompt
from exectune_jax.gcop import prompts
from exectune_jax.models import hf, sampler
from exectune_jax.models.transformer import Transformer
from exectune_jax.sim import guide
from exectune_jax.train.checkpoint import Checkpointer

TASK = {"n_train": 48, "n_validation": 4, "n_test": 4}
KEY_ENV, KEY = "EXECTUNE_TEST_CORE_KEY", "sk-test-0123456789abcdefSECRET"


def tiny_guide(path: Path, seed: int = 0) -> tuple[Transformer, object]:
    """The demo guide's tokenizer and architecture at d=64, 2 layers, weights scaled up from
    their initialisation so greedy decoding has clear winners instead of near-ties."""
    problems = tasks.get("arith", **TASK).problems("train")
    tokenizer = guide.train_tokenizer(guide.tokenizer_corpus(problems), 320)
    spec = guide.BaseGuideSpec(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                               num_kv_heads=2, max_position_embeddings=512)
    model = Transformer(guide.guide_model_config(tokenizer, spec), rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(params))))
    params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape), params)
    model = nnx.merge(graphdef, params)
    hf.save(model, model.cfg, path, tokenizer=tokenizer)
    return model, tokenizer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as the stages leave it: sft/guide, metrics, the sample summary, eval."""
    root = tmp_path_factory.mktemp("run")
    tiny_guide(root / "sft" / "guide")
    (root / "sft" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 2.0 / s, "time": 1.7e9, "step_s": 0.5}) + "\n"
                for s in (1, 2, 3))
        + json.dumps({"step": 3, "strategy_valid": 0.75}) + "\n")
    (root / "sample").mkdir()
    (root / "sample" / "summary.json").write_text(json.dumps({
        "unfiltered": False, "problems": 48, "chains": 192, "accepted": 100,
        "problems_with_accepted": 45, "chain_acceptance": {"k": 100, "n": 192, "rate": 0.521,
                                                           "ci": [0.45, 0.59]},
        "reasons": {"format": 3, "leak": 2}, "by_style": {}}))
    (root / "eval").mkdir()
    (root / "eval" / "results.md").write_text(
        "| method | accuracy |\n|---|---|\n| exectune | 91.0 |\n")
    (root / "eval" / "accuracy_vs_cost.png").write_bytes(b"\x89PNG fake")
    return root


def cfg_for(root: Path, *overrides: str):
    return load_config(None, [f"run_dir={root}", f"task.options={json.dumps(TASK)}",
                              "metrics.progress=false", *overrides])


def all_bytes(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in directory.rglob("*") if p.is_file()}


def test_exported_guide_loads_in_transformers_and_writes_the_same_greedy_strategies(run_dir,
                                                                                   tmp_path):
    out = export.export(cfg_for(run_dir), run_dir, tmp_path / "export", "fp32")
    model, _ = hf.load(run_dir / "sft" / "guide")
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    torch_model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    held_out = tasks.get("arith", **TASK).problems("test")[:3]
    prompts_ids = [encode_prompt(tokenizer, prompts.guide_messages(p, "math")) for p in held_out]
    ours = sampler.generate(model, prompts_ids, max_new_tokens=24, temperature=0.0)
    for ids, tokens in zip(prompts_ids, ours.tokens):
        with torch.no_grad():
            theirs = torch_model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
        assert theirs[0, len(ids):].tolist() == tokens
    assert len(set(map(tuple, ours.tokens))) > 1, "the held-out problems got identical strategies"


def test_bf16_export_records_its_dtype_and_keeps_logits_close(run_dir, tmp_path):
    out = export.export(cfg_for(run_dir), run_dir / "sft", tmp_path / "bf16", "bf16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), framework="np") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"bfloat16"}
    ref, _ = hf.load(run_dir / "sft" / "guide")
    back, _ = hf.load(out)
    tokens = jnp.arange(24, dtype=jnp.int32)[None] % ref.cfg.vocab_size
    positions = jnp.arange(24, dtype=jnp.int32)[None]
    a, b = np.asarray(ref(tokens, positions)), np.asarray(back(tokens, positions))
    # bf16 rounding of these noise-scaled weights moves the largest logit by 3-7% across seeds
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()
    torch_model = AutoModelForCausalLM.from_pretrained(str(out))
    assert torch_model.dtype == torch.bfloat16


def test_export_contains_no_api_key_value_even_when_pasted_into_the_config(run_dir, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    cfg = cfg_for(run_dir, f"api.core.api_key_env={KEY_ENV}", f"api.teacher.api_key_env={KEY}",
                  f"api.core.base_url=https://user:{KEY}@api.example.test/v1?key={KEY}",
                  f"api.teacher.model=teacher-{KEY}")
    out = export.export(cfg, run_dir, tmp_path / "export", "bf16")
    files = all_bytes(out)
    assert "README.md" in files and "model.safetensors" in files
    leaking = [name for name, data in files.items() if KEY.encode() in data]
    assert leaking == []
    card = files["README.md"].decode()
    assert KEY_ENV in card and "https://api.example.test/v1" in card


def test_export_refuses_when_a_run_file_would_carry_a_key_into_it(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    root = tmp_path / "run"
    (root / "sft").mkdir(parents=True)
    (root / "sft" / "guide").symlink_to(run_dir / "sft" / "guide")
    (root / "eval").mkdir()
    (root / "eval" / "results.md").write_text(f"| method |\n|---|\n| {KEY} |\n")
    with pytest.raises(export.ExportError,
                       match=f"README.md: would contain the value of \\${KEY_ENV}"):
        export.export(cfg_for(root, f"api.core.api_key_env={KEY_ENV}"), root, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


def test_secret_scan_finds_a_key_split_across_read_chunks(tmp_path):
    data = b"x" * 50 + KEY.encode() + b"y" * 50
    (tmp_path / "weights.bin").write_bytes(data)
    for chunk in (7, 64, len(data)):
        found = model_card._file_contains(tmp_path / "weights.bin", {KEY.encode(), b"absent"},
                                          chunk=chunk)
        assert found == {KEY.encode()}


def test_model_card_has_front_matter_recipe_data_metrics_and_evaluation(run_dir, tmp_path):
    cfg = cfg_for(run_dir, "model.path=Qwen/Qwen3-1.7B", "sft.steps=3", "rl.group_size=4")
    out = export.export(cfg, run_dir, tmp_path / "export", "bf16", repo_id="me/arith-guide")
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "transformers"
    assert front["base_model"] == "Qwen/Qwen3-1.7B"
    assert front["license"] == "apache-2.0"  # export.license's default
    assert {"exectune", "gcop"} <= set(front["tags"])
    assert 'from_pretrained("me/arith-guide")' in card
    assert "Exported from `sft/guide`" in card and "G=4" in card and "3 steps" in card
    assert "100 accepted strategies" in card and "52.1%" in card
    assert "| sft | loss | 0.666667 | 3 |" in card and "| sft | strategy_valid | 0.75 | 3 |" in card
    assert "| sft | time |" not in card and "step_s" not in card  # the machine, not the model
    assert "| exectune | 91.0 |" in card
    assert "](plots/accuracy_vs_cost.png)" in card
    assert (out / "plots" / "accuracy_vs_cost.png").exists()


def test_model_card_recipe_comes_from_the_config_the_run_left_behind(run_dir, tmp_path):
    root = tmp_path / "run"
    (root / "rl").mkdir(parents=True)
    (root / "rl" / "guide").symlink_to(run_dir / "sft" / "guide")
    dump(cfg_for(root, "rl.steps=123", "rl.beta=0.5"), root / "demo_config.yaml")
    out = export.export(cfg_for(root), root, tmp_path / "export", "bf16")
    card = (out / "README.md").read_text()
    assert "123 steps" in card and "beta=0.5" in card
    assert "Recipe from `run/demo_config.yaml` written by the run" in card


def test_run_dir_export_prefers_the_rl_guide_then_sft_then_the_newest_checkpoint(tmp_path):
    cfg = cfg_for(tmp_path)
    for guide_dir in ("sft/guide", "rl/guide"):
        (tmp_path / guide_dir).mkdir(parents=True)
        (tmp_path / guide_dir / "config.json").write_text("{}")
    assert export.resolve_source(cfg, tmp_path).label == "rl/guide"
    (tmp_path / "rl" / "guide" / "config.json").unlink()
    assert export.resolve_source(cfg, tmp_path).label == "sft/guide"
    for step in (5, 10):
        (tmp_path / "rl" / "checkpoints" / str(step) / "meta").mkdir(parents=True)
    src = export.resolve_source(cfg, tmp_path)
    assert (src.label, src.step, src.guide) == ("rl/checkpoints/10", 10, tmp_path / "sft" / "guide")
    assert export.resolve_source(cfg, tmp_path / "rl" / "checkpoints" / "5").step == 5


def test_export_from_a_checkpoint_restores_the_checkpoint_parameters(run_dir, tmp_path):
    root = tmp_path / "run"
    (root / "sft").mkdir(parents=True)
    (root / "sft" / "guide").symlink_to(run_dir / "sft" / "guide")
    trained, _ = tiny_guide(tmp_path / "other", seed=1)
    with Checkpointer(root / "rl" / "checkpoints") as ckpt:
        ckpt.save(7, state={"params": nnx.state(trained, nnx.Param)}, meta={"step": 7})
    cfg = cfg_for(root)
    tokens = jnp.arange(16, dtype=jnp.int32)[None]
    expected = np.asarray(trained(tokens, tokens))
    checkpoints = root / "rl" / "checkpoints"
    for source in (root, root / "rl", checkpoints, checkpoints / "7"):
        out = export.export(cfg, source, tmp_path / "export", "fp32")
        back, _ = hf.load(out)
        np.testing.assert_allclose(np.asarray(back(tokens, tokens)), expected, atol=1e-5)
        assert "Exported from `rl/checkpoints/7`" in (out / "README.md").read_text()
    assert (tmp_path / "export" / "tokenizer.json").is_file()


@pytest.mark.parametrize("make, expected", [
    (lambda d: d / "missing", "no such directory"),
    (lambda d: d, "nothing to export here"),
])
def test_bad_source_is_a_one_line_error_naming_the_path_and_what_it_expected(tmp_path, make,
                                                                            expected, capsys):
    source = make(tmp_path)
    code = cli.main(["export", str(source), str(tmp_path / "out"), f"run_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert str(source) in err and expected in err
    assert "expected a run directory" in err and "HF directory with config.json" in err


def siblings(out: Path) -> list[str]:
    """What an export left beside OUT: its temporary and set-aside directories."""
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


def foreign_dir(out: Path) -> dict[str, bytes]:
    """A directory export did not write, config.json and all; returns its bytes."""
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    (out / "config.json").write_text('{"model_type": "qwen3"}')
    (out / "sub" / "model.safetensors").write_bytes(b"\0weights")
    return all_bytes(out)


def test_export_refuses_a_directory_it_did_not_write_even_with_a_config_json(run_dir, tmp_path,
                                                                             capsys):
    out = tmp_path / "Qwen3-1.7B"
    before = foreign_dir(out)
    code = cli.main(["export", str(run_dir), str(out), f"run_dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert str(out) in err and "not written by exectune export" in err and "--overwrite" in err
    assert all_bytes(out) == before and siblings(out) == []


def test_overwrite_replaces_a_directory_export_did_not_write(run_dir, tmp_path):
    out = tmp_path / "notes"
    foreign_dir(out)
    assert cli.main(["export", str(run_dir), str(out), "--overwrite", f"run_dir={run_dir}"]) == 0
    assert not (out / "notes.txt").exists() and not (out / "sub").exists()
    assert (out / export.MARKER).is_file() and (out / "model.safetensors").is_file()
    assert siblings(out) == []


def test_a_second_export_replaces_the_first_which_its_marker_identifies(run_dir, tmp_path):
    out = tmp_path / "export"
    export.export(cfg_for(run_dir), run_dir, out, "fp32")
    marker = json.loads((out / export.MARKER).read_text())
    assert marker["source"] == "sft/guide" and marker["version"] and marker["time"]
    (out / "stale.txt").write_text("from the first export")
    export.export(cfg_for(run_dir), run_dir, out, "bf16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert not (out / "stale.txt").exists() and (out / export.MARKER).is_file()
    assert siblings(out) == []


def _fail_after_the_weights(monkeypatch, error):
    save = hf.save

    def save_then_fail(*args, **kwargs):
        save(*args, **kwargs)
        raise error

    monkeypatch.setattr(hf, "save", save_then_fail)


def _fail_renaming_the_new_export_in(monkeypatch, error):
    rename = os.rename

    def rename_or_fail(src, dst):
        if str(src).endswith(".tmp"):
            raise error
        rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_or_fail)


@pytest.mark.parametrize("fail", [_fail_after_the_weights, _fail_renaming_the_new_export_in])
@pytest.mark.parametrize("error", [OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()],
                         ids=["io-error", "interrupt"])
def test_a_failed_export_leaves_the_previous_one_and_no_temporary_directory(
        run_dir, tmp_path, monkeypatch, fail, error):
    out = tmp_path / "export"
    export.export(cfg_for(run_dir), run_dir, out, "fp32")
    before = all_bytes(out)
    fail(monkeypatch, error)
    raised = export.ExportError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(raised) as info:
        export.export(cfg_for(run_dir), run_dir, out, "bf16")
    if raised is export.ExportError:
        assert str(info.value) == (f"{out}: cannot be written (Input/output error); nothing "
                                   "there was changed")
    assert all_bytes(out) == before and siblings(out) == []


def test_export_guide_snapshots_a_live_model_and_replaces_the_previous_snapshot(run_dir, tmp_path):
    model, _ = hf.load(run_dir / "sft" / "guide")
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "sft" / "guide"))
    cfg = cfg_for(run_dir)
    out = tmp_path / "snapshot"
    export.export_guide(model, cfg, tokenizer, out, "bf16", stage="sft")
    (out / "stale.txt").write_text("from an earlier snapshot")
    export.export_guide(model, cfg, tokenizer, out, "fp32", stage="sft")
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert "| sft | loss |" in (out / "README.md").read_text()


def test_model_card_license_comes_from_the_export_config(run_dir, tmp_path):
    out = export.export(cfg_for(run_dir, "export.license=mit"), run_dir, tmp_path / "export")
    front = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])
    assert front["license"] == "mit"


def test_hub_token_comes_from_the_stored_login_when_hf_token_is_unset(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv(export.TOKEN_ENV, raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    stored = tmp_path / "token"
    stored.write_text("hf_stored_login_token\n")  # what `hf auth login` leaves
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(stored))
    assert export.hub_token("me/guide") == "hf_stored_login_token"
    monkeypatch.setenv(export.TOKEN_ENV, "hf_from_the_environment")
    assert export.hub_token("me/guide") == "hf_from_the_environment"


def test_push_without_a_token_fails_first_with_a_one_line_error(run_dir, tmp_path, monkeypatch,
                                                              capsys):
    from huggingface_hub import constants

    monkeypatch.delenv(export.TOKEN_ENV, raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login"))
    code = cli.main(["export", str(run_dir), str(tmp_path / "out"), "--push-to-hub", "me/guide"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "set $HF_TOKEN" in err and "hf auth login" in err
    assert not (tmp_path / "out").exists()


class HubStandIn:
    """The four Hub endpoints an upload of small files uses, on loopback, keeping what arrives."""

    def __init__(self):
        self.files, self.auth, self.card_yaml = {}, set(), None
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.auth.add(self.headers.get("Authorization"))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts == ["api", "repos", "create"]:
                    d = json.loads(body)
                    return self.reply({"url": f"{hub.url}/{d['organization']}/{d['name']}"})
                if parts == ["api", "validate-yaml"]:
                    hub.card_yaml = json.loads(body)
                    return self.reply({})
                if parts[-2] == "preupload":
                    return self.reply({"files": [{"path": f["path"], "uploadMode": "regular",
                                                  "shouldIgnore": False}
                                                 for f in json.loads(body)["files"]]})
                if parts[-2] == "commit":
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            value = item["value"]
                            hub.files[value["path"]] = base64.b64decode(value["content"])
                    return self.reply({"commitUrl": f"{hub.url}/me/guide/commit/{'a' * 40}",
                                       "commitOid": "a" * 40})
                self.send_error(404)

            def reply(self, obj):
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_push_uploads_every_exported_file_with_the_token(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(export.TOKEN_ENV, "hf_test_token_0123456789")
    out = export.export(cfg_for(run_dir), run_dir, tmp_path / "export", "bf16", repo_id="me/guide")
    hub = HubStandIn()
    try:
        url = export.push(out, "me/guide", endpoint=hub.url)
    finally:
        hub.server.shutdown()
    assert url == f"{hub.url}/me/guide/commit/{'a' * 40}"
    assert hub.files == {name: data for name, data in all_bytes(out).items()
                         if name != export.MARKER}
    assert export.MARKER in all_bytes(out)
    assert hub.auth == {"Bearer hf_test_token_0123456789"}
    assert "library_name: transformers" in hub.card_yaml["content"]


# ---------------------------------------------------------------------------------------------
# LoRA runs: merged weights for transformers, adapters for peft


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA SFT stage as it leaves its directory: a checkpoint of adapters naming the frozen
    base, and guide/ with the merged weights; returns (run dir, the adapted model)."""
    from exectune_jax.config import LoraConfig
    from exectune_jax.models import lora

    root = tmp_path_factory.mktemp("lora_run")
    base, tokenizer = tiny_guide(root / "base")
    spec = LoraConfig(rank=4, alpha=8.0, dropout=0.05,
                      target_modules=["q_proj", "v_proj", "down_proj"])
    lora.apply(base, spec, seed=3)
    for i, (_, _, module) in enumerate(lora.adapted(base)):
        b = module.lora_b
        b.set_value(0.3 * jax.random.normal(jax.random.key(20 + i), b.get_value().shape))
    with Checkpointer(root / "sft" / "checkpoints") as ckpt:
        ckpt.save(5, state={"params": nnx.state(base, lora.TRAINABLE)},
                  meta={"step": 5, **lora.checkpoint_meta(spec, root / "base")})
    hf.save(lora.merged(base), base.cfg, root / "sft" / "guide", tokenizer=tokenizer)
    return root, base


def _torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def test_lora_export_writes_merged_weights_and_a_peft_adapter_with_the_same_logits(
        lora_run, tmp_path):
    from peft import PeftModel

    root, adapted = lora_run
    tokens = np.arange(3, 19, dtype=np.int32)[None]
    ours = np.asarray(adapted(jnp.asarray(tokens), jnp.asarray(np.arange(16)[None])))
    peft_dir = tmp_path / "adapter"
    code = cli.main(["export", str(root / "sft"), str(tmp_path / "merged"), "--dtype", "fp32",
                     "--peft", str(peft_dir), f"run_dir={root}"])
    assert code == 0
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    np.testing.assert_allclose(_torch_logits(merged, tokens), ours, atol=1e-4)
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((root / "base").resolve())
    assert sorted(config["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    assert config["lora_dropout"] == 0.05  # the training spec, read from the checkpoint's meta
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]).eval()
    on_base = PeftModel.from_pretrained(base, str(peft_dir)).eval()
    np.testing.assert_allclose(_torch_logits(on_base, tokens), ours, atol=1e-4)
    assert "Exported from `sft/checkpoints/5`" in (tmp_path / "merged" / "README.md").read_text()


def test_peft_export_of_a_full_fine_tune_is_a_one_line_error(run_dir, tmp_path, capsys):
    code = cli.main(["export", str(run_dir), str(tmp_path / "out"), "--peft",
                     str(tmp_path / "adapter"), f"run_dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "holds no LoRA adapters" in err and not (tmp_path / "adapter").exists()


def test_peft_export_refuses_a_directory_it_did_not_write(lora_run, tmp_path, capsys):
    root, _ = lora_run
    adapter = tmp_path / "adapter"
    before = foreign_dir(adapter)
    code = cli.main(["export", str(root / "sft"), str(tmp_path / "merged"), "--peft",
                     str(adapter), f"run_dir={root}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"--peft {adapter}: exists and was not written by exectune export" in err
    assert all_bytes(adapter) == before and not (tmp_path / "merged").exists()
