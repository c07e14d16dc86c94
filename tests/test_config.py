import argparse

import pytest

from cxrlt import config


def _parse(*argv):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.from_args(parser.parse_args(list(argv)))


def test_defaults_are_seed_002_best_single_model():
    cfg = _parse()
    assert cfg["model"]["backbone"] == "efficientnetv2-s" and cfg["input"]["size"] == 768
    assert cfg["train"]["folds"] == 5 and cfg["train"]["epochs"] == 20
    assert cfg["loss"] == {"name": "focal", "params": {"alpha": 0.25, "gamma": 2.0, "apply_class_balancing": True,
                                                       "label_smoothing": 0.01}}
    assert (cfg["optim"]["name"], cfg["optim"]["lr"], cfg["optim"]["beta_1"], cfg["optim"]["beta_2"]) == ("adam", 1e-4, 0.9, 0.999)
    assert cfg["mix"]["label_mode"] == "clip_sum"


def test_flags_override_config_file(tmp_path):
    (tmp_path / "exp.yaml").write_text("input: {size: 512}\ntrain: {epochs: 3}\n")
    cfg = _parse("--config", str(tmp_path / "exp.yaml"), "--size", "224", "--fold", "2", "--lr", "3e-4",
                 "--weights", "none", "--set", "loss.params.gamma=1.5")
    assert cfg["name"] == "exp" and cfg["input"]["size"] == 224 and cfg["train"]["epochs"] == 3
    assert cfg["train"]["fold"] == 2 and cfg["optim"]["lr"] == 3e-4 and cfg["model"]["weights"] == "none"
    assert cfg["loss"]["params"]["gamma"] == 1.5 and cfg["loss"]["params"]["alpha"] == 0.25


def test_another_loss_starts_from_its_own_defaults():
    assert _parse("--set", "loss.name=bce")["loss"] == {"name": "bce", "params": {}}


@pytest.mark.parametrize("argv, match", [
    (["--set", "train.epoch=3"], "did you mean 'train.epochs'"),
    (["--size", "big"], "input.size must be int"),
    (["--fold", "5"], "0..4"),
    (["--set", "train.folds=1"], "folds must be >= 2"),
    (["--set", "mix.mosaic=0.7", "--set", "mix.mixup=0.5"], "<= 1"),
    (["--set", "predict.tta=[rotate]"], "predict.tta"),
    (["--set", "train.checkpoint=worst"], "best or last"),
])
def test_bad_settings_fail_before_training(argv, match):
    with pytest.raises(config.ConfigError, match=match):
        _parse(*argv)


def test_unknown_key_in_file_is_named(tmp_path):
    (tmp_path / "bad.yaml").write_text("model:\n  backbon: convnext-tiny\n")
    with pytest.raises(config.ConfigError, match="bad.yaml: unknown setting 'model.backbon'; did you mean 'model.backbone'"):
        _parse("--config", str(tmp_path / "bad.yaml"))


def test_diff_lists_changed_settings():
    a, b = _parse(), _parse("--size", "512")
    assert config.diff(a, b) == ["input.size: 768 -> 512"]
