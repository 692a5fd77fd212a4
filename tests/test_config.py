"""Config loading: layering, overrides, and errors that name the key and where it came from."""

import pytest

from exectune_jax.cli import build_parser, main
from exectune_jax.config import Config, ConfigError, load_config


def test_defaults_are_the_embedded_offline_world():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.api.core.base_url == "sim" and cfg.task.name == "arith"


def test_dotted_overrides_set_nested_fields_with_yaml_types():
    cfg = load_config(None, ["sft.steps=7", "sft.lr=3e-4", "api.core.model=m", "rl.weights={leak: 2}"])
    assert cfg.sft.steps == 7 and cfg.sft.lr == pytest.approx(3e-4)
    assert cfg.api.core.model == "m"
    assert cfg.rl.weights == {"leak": 2.0}


def test_file_layers_on_its_base_and_overrides_win(tmp_path):
    (tmp_path / "base.yaml").write_text("sft:\n  steps: 11\n  lr: 0.5\nseed: 3\n")
    (tmp_path / "top.yaml").write_text("base: base.yaml\nsft:\n  steps: 12\n")
    cfg = load_config(tmp_path / "top.yaml", ["seed=4"])
    assert (cfg.sft.steps, cfg.sft.lr, cfg.seed) == (12, 0.5, 4)


def test_misspelt_key_in_file_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sft:\n  stpes: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "sft.stpes" in str(e.value) and str(path.name) in str(e.value)
    assert "\n" not in str(e.value)


def test_a_misspelt_key_suggests_the_closest_valid_key_in_files_and_overrides(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("sft:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"config file {path}: unknown key `sft.lrr`; did you mean `sft.lr`?"
    with pytest.raises(ConfigError, match=r"^command line: unknown key `sft.lrr`; did you mean `sft.lr`\?$"):
        load_config(None, ["sft.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown key `api.judge.base_ulr`; did you mean `api.judge.base_url`\?"):
        load_config(None, ["api.judge={base_ulr: x}"])  # an optional section, built whole from a mapping
    with pytest.raises(ConfigError, match=r"unknown key `sfft`; did you mean `sft`\?"):
        load_config(None, ["sfft.lr=0.1"])


def test_an_unknown_key_near_no_valid_one_lists_the_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["sft.zzzzzz=1"])
    assert str(e.value).startswith("command line: unknown key `sft.zzzzzz`; valid here: ")
    assert "did you mean" not in str(e.value) and "lr" in str(e.value).split("valid here: ")[1].split(", ")


def test_wrong_type_on_command_line_names_the_key():
    with pytest.raises(ConfigError, match=r"command line: `rl.group_size` must be int"):
        load_config(None, ["rl.group_size=eight"])


def test_bool_is_not_accepted_as_int():
    with pytest.raises(ConfigError, match="sft.steps"):
        load_config(None, ["sft.steps=true"])


def test_optional_section_can_be_filled_from_a_mapping():
    cfg = load_config(None, ["api.judge={model: judge-1, provider: anthropic}"])
    assert cfg.api.judge.model == "judge-1" and cfg.api.judge.provider == "anthropic"


def test_choice_fields_are_validated():
    with pytest.raises(ConfigError, match="rl.preset"):
        load_config(None, ["rl.preset=ppo"])


def test_cli_reports_config_errors_in_one_line_and_exit_code_2(capsys):
    assert main(["sft", "sft.nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sft.nope" in err


def test_every_subcommand_has_help():
    parser = build_parser()
    for name in ("demo", "serve-sim", "sample", "sft", "rl", "eval", "plan", "export"):
        with pytest.raises(SystemExit) as e:
            parser.parse_args([name, "--help"])
        assert e.value.code == 0


def test_several_files_layer_in_order(tmp_path):
    (tmp_path / "task.yaml").write_text("sft:\n  steps: 5\nmesh:\n  fsdp: 2\n")
    (tmp_path / "topo.yaml").write_text("mesh:\n  fsdp: 8\n  tensor: 1\n")
    cfg = load_config([tmp_path / "task.yaml", tmp_path / "topo.yaml"])
    assert (cfg.sft.steps, cfg.mesh.fsdp) == (5, 8)


def test_overrides_may_follow_options():
    from exectune_jax.cli import parse_args

    args = parse_args(["export", "runs/a", "out", "--dtype", "fp32", "seed=3"])
    assert (args.source, args.out, args.dtype, args.overrides) == ("runs/a", "out", "fp32", ["seed=3"])
    args = parse_args(["sft", "--config", "a.yaml", "sft.steps=3", "--config", "b.yaml", "seed=1"])
    assert args.config == ["a.yaml", "b.yaml"] and args.overrides == ["sft.steps=3", "seed=1"]


def test_every_numeric_field_of_every_section_declares_a_valid_range():
    from exectune_jax.config import numeric_fields, parse_interval, section_types

    for section in section_types():
        ranges = getattr(section, "RANGES", {})
        numeric = numeric_fields(section)
        assert sorted(set(numeric) - set(ranges)) == [], f"{section.__name__}: no declared range"
        assert sorted(set(ranges) - set(numeric)) == [], f"{section.__name__}: range of no field"
        for interval in ranges.values():
            parse_interval(interval)
    assert section_types().__next__() is Config


def test_defaults_lie_inside_their_declared_ranges():
    from exectune_jax.config import in_range, sections

    for prefix, section in sections(Config()):
        for name, interval in getattr(type(section), "RANGES", {}).items():
            value = getattr(section, name)
            assert value is None or in_range(value, interval), f"{prefix}{name}={value}"


@pytest.mark.parametrize("override,interval", [("sft.batch_size=0", "[1, inf)"),
                                               ("sft.steps=-5", "[1, inf)"),
                                               ("sim.fault_rate=1.0", "[0, 1)"),
                                               ("api.core.temperature=3", "[0, 2]"),
                                               ("api.judge={temperature: -1}", "[0, 2]")])
def test_a_value_outside_its_range_names_the_field_and_the_range(override, interval):
    key = override.split("=")[0].replace("api.judge", "api.judge.temperature")
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert f"`{key}`" in str(e.value) and interval in str(e.value)


def test_every_field_has_its_declared_doc():
    import dataclasses

    from exectune_jax.config import field_docs, section_doc, section_types

    for section in section_types():
        docs = field_docs(section)
        for f in dataclasses.fields(section):
            inner = getattr(section(), f.name)
            assert docs.get(f.name) or (dataclasses.is_dataclass(inner) and section_doc(type(inner))), \
                f"{section.__name__}.{f.name} has no doc"
    assert field_docs(Config().sft.__class__)["steps"] == "optimizer steps"
    assert field_docs(Config().sample.__class__)["max_cost_vs_core"].startswith("... and, when set")


def test_exectune_config_prints_every_field_with_its_doc_and_reads_back(tmp_path, capsys):
    import dataclasses

    from exectune_jax.config import field_docs, sections

    assert main(["config", "sft.lr=1e-4", "rl.steps=3"]) == 0
    out = capsys.readouterr().out
    for prefix, section in sections(load_config()):
        for f in dataclasses.fields(section):
            doc = field_docs(type(section)).get(f.name)
            lines = [line for line in out.splitlines() if line.strip().startswith(f"{f.name}:")]
            assert lines, f"{prefix}{f.name} not printed"
            if doc:
                assert doc.split()[-1] in out, f"{prefix}{f.name}: doc not printed"
    printed = tmp_path / "printed.yaml"
    printed.write_text(out)
    assert load_config(printed) == load_config(None, ["sft.lr=1e-4", "rl.steps=3"])


def test_stage_help_lists_its_sections_field_docs(capsys):
    from exectune_jax.config import SftConfig, section_help

    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    out = capsys.readouterr().out
    assert section_help(SftConfig, "sft.") in out
    assert "sft.steps=200" in out and "optimizer steps" in out


def test_lora_section_takes_peft_module_names_and_rejects_others():
    cfg = load_config(None, ["model.lora.rank=8", "model.lora.target_modules=[q_proj,v_proj]"])
    assert (cfg.model.lora.rank, cfg.model.lora.target_modules) == (8, ["q_proj", "v_proj"])
    assert load_config().model.lora.rank == 0  # off by default: full fine-tuning
    with pytest.raises(ConfigError, match="model.lora.*query_key_value"):
        load_config(None, ["model.lora.rank=8", "model.lora.target_modules=[query_key_value]"])


def test_world_overrides_are_checked_at_load_and_a_bad_one_is_one_line_naming_the_key(capsys):
    cfg = load_config(None, ["sim.world.follow_compound=0.25", "sim.world.teacher_habit_rate=0"])
    assert cfg.sim.world == {"follow_compound": 0.25, "teacher_habit_rate": 0}
    assert main(["serve-sim", "sim.world.follow_compund=0.25"]) == 2
    err = capsys.readouterr().err.strip()
    assert "`sim.world.follow_compund` is not a value of the simulated world" in err and "\n" not in err
    with pytest.raises(ConfigError, match=r"`sim.world.follow_compound` is 2; it must be in \[0, 1\]"):
        load_config(None, ["sim.world={follow_compound: 2}"])


@pytest.mark.parametrize("override, needle", [
    ("eval.cores=[]", "list one or more of core, core_next, core_strong"),
    ("eval.cores=[core, core]", "each once"),
    ("eval.cores=[core, core_newest]", "list one or more of"),
])
def test_eval_cores_name_distinct_core_endpoints(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])
    with pytest.raises(ConfigError, match="`api.core_next` is not set"):
        load_config(None, ["eval.cores=[core, core_next]", "api.core_next=null"])
    assert load_config(None, ["eval.cores=[core_next, core]"]).eval.cores == ["core_next", "core"]
