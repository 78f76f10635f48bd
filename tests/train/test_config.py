import json

import pytest

from training.config import Config, list_presets, load_config, valid_keys

from ..conftest import run_cli


def test_every_documented_preset_exists():
    assert set(list_presets()) >= {"tiny", "cifar32", "tiny64", "stl96", "imagenet"}


def test_overrides_are_typed_and_accept_bare_names():
    cfg = load_config("tiny", ["--train.lr=1e-3", "--drop_rate=0.5", "--repair=false", "--ae_channels=[8, 16, 32]"])
    assert cfg.train.lr == 1e-3 and cfg.train.drop_rate == 0.5
    assert cfg.model.repair is False and cfg.model.ae_channels == [8, 16, 32]


@pytest.mark.parametrize(
    "override, message",
    [
        ("--nope=1", "unknown config key 'nope'"),
        ("--train.lr=fast", "expected float"),
        ("--batch_size=1.5", "expected int"),
        ("--repair=maybe", "expected true/false"),
        ("--ae_channels=8", "expected a list"),
    ],
)
def test_bad_overrides_fail_loudly(override, message):
    with pytest.raises((KeyError, TypeError)) as info:
        load_config("tiny", [override])
    assert message in str(info.value)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(FileNotFoundError, match="tiny64"):
        load_config("nonexistent")


def test_config_round_trips_through_a_dict():
    cfg = load_config("tiny64", ["--lr=2e-4"])
    again = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.preset == "tiny64"
    assert "train.drop_rate" in valid_keys()


def test_cli_rejects_unknown_key_with_exit_code_2(tmp_path):
    result = run_cli("train", "--preset", "tiny", "--run-dir", str(tmp_path / "r"), "--learning_rate=1")
    assert result.returncode == 2
    assert "unknown config key 'learning_rate'" in result.stderr
    assert not (tmp_path / "r").exists()


def test_cli_dry_run_prints_the_resolved_config(tmp_path):
    result = run_cli("train", "--preset", "cifar32", "--run-dir", str(tmp_path / "r"), "--dry-run", "--spot_steps=7")
    assert result.returncode == 0, result.stderr
    cfg = json.loads(result.stdout)
    assert cfg["preset"] == "cifar32" and cfg["train"]["spot_steps"] == 7
