"""The config system: YAML + dotted overrides into frozen dataclasses, with errors that name the key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from typing import Literal, Optional

import pytest
import yaml

from reclm_jax.config import load_config, parse_stage_args, save_config
from reclm_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Train:
    lr: float = 1e-3
    epochs: int = 3
    tasks: tuple[str, ...] = ("SFTSeqRec",)
    schedule: Literal["linear", "poly"] = "poly"
    warmup: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Stage:
    data_path: str
    output_dir: str = "runs/x"
    seed: int = 0
    train: Train = Train()
    use_lora: bool = True


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_yaml_then_overrides_win(tmp_path):
    p = write(tmp_path, """
        data_path: data/ml1m
        train:
          lr: 2e-4
          tasks: [SFTSeqRec, SFTControlRec]
    """)
    cfg = load_config(Stage, p, ["train.lr=1e-4", "seed=7", "train.warmup=10", "output_dir=${data_path}/out"])
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.seed == 7 and cfg.train.warmup == 10
    assert cfg.train.tasks == ("SFTSeqRec", "SFTControlRec")
    assert cfg.output_dir == "data/ml1m/out"  # interpolation resolved
    assert cfg.train.epochs == 3  # default kept
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]


def test_yaml_1_1_float_strings_and_int_to_float(tmp_path):
    p = write(tmp_path, "data_path: d\ntrain: {lr: 1e-3}\n")  # PyYAML reads 1e-3 as a string
    assert load_config(Stage, p).train.lr == pytest.approx(1e-3)
    assert load_config(Stage, p, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize("overrides,expected", [
    (["train.lrr=1"], "unknown key 'train.lrr'; valid keys under 'train': lr, epochs, tasks, schedule, warmup"),
    (["sed=1"], "unknown key 'sed'; valid keys: data_path, output_dir, seed, train, use_lora"),
    (["seed=abc"], "key 'seed' expects int, got 'abc'"),
    (["train.lr=fast"], "key 'train.lr' expects float, got 'fast'"),
    (["use_lora=maybe"], "key 'use_lora' expects bool, got 'maybe'"),
    (["train.schedule=cosine"], "key 'train.schedule' expects one of 'linear', 'poly', got 'cosine'"),
    (["train.tasks=SFTSeqRec"], "key 'train.tasks' expects list of str, got 'SFTSeqRec'"),
    (["train=5"], "'train' must be a mapping or the path of a YAML file holding one, got 5"),
    (["seed"], "bad override 'seed': expected key=value"),
])
def test_bad_values_name_the_key(tmp_path, overrides, expected):
    p = write(tmp_path, "data_path: d\n")
    with pytest.raises(UserError) as e:
        load_config(Stage, p, overrides)
    assert expected in str(e.value)


def test_a_section_given_as_a_preset_file(tmp_path, monkeypatch):
    """``train=FILE.yaml`` (or ``train: FILE.yaml`` in the config) loads the section from FILE: it replaces the
    whole section (keys FILE lacks take their defaults, not the config's), later overrides still apply."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "fast.yaml").write_text("lr: 0.5\nschedule: linear\n")
    p = write(tmp_path, "data_path: d\ntrain: {epochs: 9, lr: 2e-4}\n")
    cfg = load_config(Stage, p, ["train=presets/fast.yaml"])
    assert (cfg.train.lr, cfg.train.schedule, cfg.train.epochs) == (0.5, "linear", Train().epochs)
    assert load_config(Stage, p, ["train=presets/fast.yaml", "train.epochs=4"]).train.epochs == 4
    assert load_config(Stage, p, ["train.epochs=4", "train=presets/fast.yaml"]).train.epochs == Train().epochs
    in_file = write(tmp_path, "data_path: d\ntrain: presets/fast.yml\n")
    (tmp_path / "presets" / "fast.yml").write_text("lr: 0.25\n")
    assert load_config(Stage, in_file).train.lr == 0.25


def test_a_bad_preset_file_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = write(tmp_path, "data_path: d\n")
    with pytest.raises(UserError, match=r"override 'train=nope.yaml': 'train' names the preset file nope.yaml, "
                                        r"which does not exist"):
        load_config(Stage, p, ["train=nope.yaml"])
    (tmp_path / "bad.yaml").write_text("lr: 1\nlrr: 2\n")
    with pytest.raises(UserError, match=r"bad.yaml \(preset for 'train'\): unknown key 'train.lrr'"):
        load_config(Stage, p, ["train=bad.yaml"])
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(UserError, match=r"list.yaml: a preset for 'train' must be a mapping"):
        load_config(Stage, p, ["train=list.yaml"])
    (tmp_path / "worse.yaml").write_text("schedule: cosine\n")
    in_file = write(tmp_path, "data_path: d\ntrain: worse.yaml\n")
    with pytest.raises(UserError, match=r"worse.yaml \(preset for 'train'\): key 'train.schedule' expects one of"):
        load_config(Stage, in_file)


@dataclasses.dataclass(frozen=True)
class Checked:
    n: int = 1

    def __post_init__(self):
        if self.n < 1:
            raise UserError(f"checked.n must be >= 1, got {self.n}")


@dataclasses.dataclass(frozen=True)
class WithChecked:
    checked: Checked = Checked()


def test_a_config_s_own_check_names_its_source(tmp_path):
    p = write(tmp_path, "checked: {n: 0}\n")
    with pytest.raises(UserError, match=r"c.yaml: checked.n must be >= 1, got 0"):
        load_config(WithChecked, p)


def test_missing_required_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="missing required key 'data_path'"):
        load_config(Stage, None, ["seed=1"])
    with pytest.raises(UserError, match=r"key 'train.warmup' must be set \(it is \?\?\? in the file\)"):
        load_config(Stage, write(tmp_path, "data_path: d\ntrain:\n  warmup: ???\n"))
    with pytest.raises(UserError, match="config file not found"):
        load_config(Stage, tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(Stage, write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(UserError, match="top level must be a mapping"):
        load_config(Stage, write(tmp_path, "- 1\n- 2\n"))


def test_save_config_round_trips(tmp_path):
    cfg = load_config(Stage, None, ["data_path=d", "train.tasks=[A,B]", "train.lr=0.5"])
    path = save_config(cfg, tmp_path / "run")
    assert yaml.safe_load(path.read_text())["train"]["tasks"] == ["A", "B"]
    assert load_config(Stage, path) == cfg


def test_parse_stage_args():
    assert parse_stage_args(["--config", "a.yaml", "x.y=1", "z=2"]) == ("a.yaml", ["x.y=1", "z=2"])
    assert parse_stage_args(["--config=a.yaml"]) == ("a.yaml", [])
    with pytest.raises(UserError, match="unexpected argument '--lr'"):
        parse_stage_args(["--lr", "1"])


def test_cli_user_error_is_one_line_exit_2(tmp_path):
    code = textwrap.dedent("""
        import dataclasses
        from reclm_jax.cli import run_main
        from reclm_jax.config import load_config, parse_stage_args
        @dataclasses.dataclass(frozen=True)
        class C:
            data_path: str = "d"
        def main():
            path, ov = parse_stage_args()
            load_config(C, path, ov)
        run_main(main)
    """)
    r = subprocess.run([sys.executable, "-c", code, "nope=1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: <defaults> (with command-line overrides): unknown key 'nope'; valid keys: data_path"


def test_overriding_one_key_keeps_the_sections_other_defaults():
    # SFTConfig's lora default is LoraConfig(rank=16, alpha=8, dropout=0.1, targets=... + lm_head), not the class
    # defaults: setting lora.rank alone must keep the rest of it.
    from reclm_jax.sft.config import DEFAULT_TARGETS, SFTConfig

    cfg = load_config(SFTConfig, None, ["data_path=d", "output_dir=o", "lora.rank=8"])
    assert cfg.lora.rank == 8 and cfg.lora.dropout == 0.1 and cfg.lora.targets == DEFAULT_TARGETS
    assert load_config(SFTConfig, None, ["data_path=d", "output_dir=o"]).lora.rank == 16
