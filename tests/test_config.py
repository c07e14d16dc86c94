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
    (["--set", "train.checkpoint=worst"], "train.checkpoint must be one of best, last"),
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


@pytest.mark.parametrize("argv, match", [
    # wrong types
    (["--epochs", "2.5"], "train.epochs must be int"),
    (["--set", "train.epochs=true"], "train.epochs must be int"),
    (["--set", "augment.hflip=maybe"], "augment.hflip must be true or false"),
    (["--set", "input.size=[1, 2]"], "input.size must be int"),
    (["--set", "train.epochs=null"], "train.epochs cannot be empty"),
    (["--set", "train.steps_per_epoch=ten"], "train.steps_per_epoch must be int or null"),
    (["--set", "mix.mosaic_center=[0.2, 0.8"], "mix.mosaic_center=.*is not a valid value"),
    (["--set", "data.classes=[A, B"], "data.classes=.*is not a valid list"),
    (["--set", "input=5"], "input is a section, not a value"),
    # names looked up only when a fold starts, now checked up front
    (["--backbone", "efficientnetv2-xl"], "model.backbone must be one of.*did you mean 'efficientnetv2-l'"),
    (["--set", "loss.name=focall"], "loss.name must be one of.*did you mean 'focal'"),
    (["--set", "optim.name=rmsprop"], "optim.name must be one of adam, adamw, sgd"),
    (["--set", "optim.schedule=step"], "optim.schedule must be one of constant, cosine"),
    (["--uncertain", "maybe"], "data.uncertain must be one of error, zero, one, ignore"),
    (["--classes", "cxrlt2030"], "data.classes must be one of auto, edition, cxrlt2023, nih14"),
    (["--set", "data.classes=[A, A]"], "each class once"),
    (["--check-images", "full"], "data.check_images must be one of header, deep, off"),
    (["--strategy", "horovod"], "distribute.strategy must be one of auto, one, mirrored, multiworker"),
    (["--weights", "/nowhere/b0.weights.h5"], "model.weights must be none, imagenet or an existing weights file"),
    # impossible values and combinations
    (["--set", "train.folds=0"], "folds must be >= 2"),
    (["--fold", "-1"], "0..4"),
    (["--folds", "3", "--fold", "3"], "0..2"),
    (["--lr", "0"], "optim.lr must be > 0"),
    (["--set", "model.dropout=1.0"], "model.dropout must be in \\[0, 1\\)"),
    (["--set", "train.ema=1"], "train.ema must be in \\[0, 1\\)"),
    (["--init", "/nowhere/run"], "model.init must be a cxrlt run directory or a .keras model file"),
    (["--set", "train.steps_per_epoch=0"], "steps_per_epoch must be null \\(one pass\\) or >= 1"),
    (["--set", "predict.batch_size=0"], "predict.batch_size must be >= 1"),
    (["--set", "mix.mixup_alpha=0"], "mix.mixup_alpha must be > 0"),
    (["--set", "mix.mosaic_center=[0.8, 0.2]"], "mosaic_center must satisfy"),
    (["--set", "mix.mosaic_variant=diagonal"], "mix.mosaic_variant must be one of both, crop, resize"),
    (["--set", "mix.cutout_size=0"], "cutout_size must be in \\(0, 1\\]"),
    (["--size", "16"], "input.size must be an integer >= 32"),
    (["--name", "../elsewhere"], "must be a plain folder name"),
    # issue 23's head, optimizer and training settings
    (["--set", "model.csra_heads=3"], "authors' code has temperatures for 1, 2, 4, 6, 8 heads"),
    (["--set", "model.csra_heads=2", "--set", "model.csra_temperatures=[1]"], "one number > 0 per head"),
    (["--set", "model.csra_variant=cxrlt2026_winner", "--set", "model.csra_heads=2"], "has one softmax head"),
    (["--set", "model.classifier=cosine", "--set", "model.head=csra"], "cosine is the gap head's classifier"),
    (["--set", "loss.name=ldam", "--set", "model.head=ml_decoder"], "set loss.params.scale 1"),
    (["--set", "train.freeze_backbone_epochs=20"], "freeze_backbone_epochs \\(20\\) must be below train.epochs"),
    (["--epochs", "10", "--set", "train.freeze_backbone_epochs=5", "--set", "optim.warmup_epochs=5"],
     "minus train.freeze_backbone_epochs"),
    (["--set", "optim.clip_norm=-1"], "optim.clip_norm must be >= 0"),
    (["--set", "optim.head_warmup_lr=0"], "optim.head_warmup_lr must be null \\(optim.lr\\) or > 0"),
    (["--set", "ensemble.normal_gating=0.5", "--set", "ensemble.normal_gating_power=0.5"], "two forms of one step"),
    (["--set", "sampling.sampler=repeat_factor", "--set", "sampling.repeat_max=0.5"], "sampling.repeat_max must be >= 1"),
])
def test_every_bad_setting_is_named_before_any_work(argv, match):
    with pytest.raises(config.ConfigError, match=match):
        _parse(*argv)


def test_flags_for_the_reliability_switches():
    cfg = _parse("--skip-bad", "--allow-outside-root", "--check-images", "deep", "--uncertain", "ignore")
    assert cfg["data"]["skip_bad"] is True and cfg["data"]["allow_outside_root"] is True
    assert cfg["data"]["check_images"] == "deep" and cfg["data"]["uncertain"] == "ignore"
    defaults = _parse()
    assert defaults["data"]["skip_bad"] is False and defaults["data"]["check_images"] == "header"


def test_wrong_types_in_a_config_file_name_the_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  epochs: many\n")
    with pytest.raises(config.ConfigError, match="bad.yaml: train.epochs must be int"):
        _parse("--config", str(tmp_path / "bad.yaml"))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(config.ConfigError, match="list.yaml: expected a mapping"):
        _parse("--config", str(tmp_path / "list.yaml"))
    (tmp_path / "broken.yaml").write_text("train: [\n")
    with pytest.raises(config.ConfigError, match="broken.yaml: not valid YAML"):
        _parse("--config", str(tmp_path / "broken.yaml"))
    with pytest.raises(config.ConfigError, match="does not exist"):
        _parse("--config", str(tmp_path / "nope.yaml"))


def test_a_run_directory_with_another_config_is_refused_unless_forced(tmp_path):
    from cxrlt.data import dataset
    from cxrlt.train import kfold as train

    (tmp_path / "l.csv").write_text("path,A\nx.png,1\ny.png,0\n")
    table = dataset.read_labels(tmp_path / "l.csv")
    first = _parse("--out", str(tmp_path / "runs"), "--name", "r", "--weights", "none")
    train.open_run(first, table, force=False)
    saved = (tmp_path / "runs" / "r" / "config.yaml").read_text()
    train.open_run(first, table, force=False)  # the same config resumes
    (tmp_path / "runs" / "r" / "fold0" / "backup").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "fold0" / "backup" / "checkpoint").write_text("")  # an epoch was finished
    other = _parse("--out", str(tmp_path / "runs"), "--name", "r", "--weights", "none", "--size", "512")
    with pytest.raises(config.ConfigError, match="another config \\(input.size: 768 -> 512\\).*--force"):
        train.open_run(other, table, force=False)
    assert (tmp_path / "runs" / "r" / "config.yaml").read_text() == saved  # refused: nothing rewritten
    train.open_run(other, table, force=True)
    assert "size: 512" in (tmp_path / "runs" / "r" / "config.yaml").read_text()


def test_a_run_saved_before_a_setting_existed_is_not_another_config():
    current = _parse()
    old = _parse()
    del old["data"]["skip_bad"], old["data"]["check_images"]  # as written by an older cxrlt
    assert config.diff(old, current) == []
    assert config.diff(old, _parse("--skip-bad")) == ["data.skip_bad: False -> True"]


def test_train_refuses_an_ensemble_config(capsys):
    from cxrlt.train import kfold as train

    from .conftest import REPO

    with pytest.raises(SystemExit) as exc:
        train.main(["--config", str(REPO / "configs" / "08_ensemble_5_6.yaml")])
    assert exc.value.code == 2
    assert "python -m cxrlt.ensemble --config" in capsys.readouterr().err


def test_a_config_of_only_a_name_is_not_an_ensemble_config(tmp_path):
    """An ablation's baseline variant ({} over an empty base) is written as `name: seed002`: it trains the
    defaults, it is not an ensemble config (this refusal stopped the beyond_seed002 grid's first variant)."""
    from cxrlt.train import kfold as train

    (tmp_path / "only_name.yaml").write_text("name: seed002\n")
    train.refuse_ensemble_config(tmp_path / "only_name.yaml")  # no error
    (tmp_path / "ens.yaml").write_text("name: e\nensemble: {runs: [a]}\n")
    with pytest.raises(config.ConfigError, match="ensemble config"):
        train.refuse_ensemble_config(tmp_path / "ens.yaml")


def test_a_bad_study_aggregation_fails_at_config_time():
    with pytest.raises(config.ConfigError, match="predict.study_aggregation must be one of"):
        config.load(overrides={"predict": {"study_aggregation": "median"}})


def test_every_loss_and_backbone_name_is_written_once():
    """The schema's name lists are what the factories build: a name added to one and not the other fails here."""
    from cxrlt.config import schema
    from cxrlt.model import losses, models

    assert sorted(losses.LOSSES) == sorted(schema.LOSSES) == losses.loss_names()
    assert models.BACKBONES is schema.BACKBONES


@pytest.mark.parametrize("key, value, match", [
    ("optim.lr", "inf", "optim.lr must be > 0 \\(at most 10\\), got inf"),
    ("optim.lr", "nan", "optim.lr must be > 0"),
    ("input.size", "100000", "input.size must be >= 32 \\(at most 4096\\)"),
    ("train.batch_size", str(10**23), "train.batch_size must be >= 1 \\(at most 65536\\)"),
    ("train.epochs", "1000000", "train.epochs must be >= 1"),
    ("mix.mixup_alpha", "-1", "mix.mixup_alpha must be > 0"),
    ("sampling.q", "inf", "sampling.q must be in \\[-10, 10\\]"),
    ("augment.rotate_deg", "720", "augment.rotate_deg must be in \\[0, 180\\]"),
    ("seed", "-1", "seed must be >= 0"),
])
def test_numeric_settings_have_ranges(key, value, match):
    with pytest.raises(config.ConfigError, match=match):
        config.load(None, {key: value})


def test_mixing_draws_from_the_whole_update_so_the_readme_recipes_mix_and_too_few_images_are_refused(tmp_path, capsys):
    """The mix partners come from every replica's micro-batches of an update: the README's small-batch recipes
    (batch 2 x accumulate 4 on one GPU; 4 x accumulate 2 on two GPUs; seed 002's batch 8 on 8 GPUs, one image
    each) mix 8 images, where each replica's own 1-2 images were refused. Fewer than Mosaic's 4 in the whole
    update is refused on the product path, naming the fix; in host mode each worker mixes its own share."""
    from cxrlt.data import mix
    from cxrlt.train import kfold as train

    assert mix.images_needed({"mosaic": 0.5, "mixup": 0.3}) == (4, "mix.mosaic")
    assert mix.images_needed({"mosaic": 0.0, "cutmix": 0.3}) == (2, "mix.cutmix")
    assert mix.images_needed({"mosaic": 0.0, "mixup": 0.0, "cutmix": 0.0}) == (1, None)

    def recipe(batch, accumulate):
        return config.load(overrides={"train": {"batch_size": batch, "accumulate": accumulate}})

    for on_device in (False, True):
        assert train.check_mix_group(recipe(2, 4), 1, 1, on_device) == 8  # one GPU
        assert train.check_mix_group(recipe(4, 2), 2, 2, on_device) == 8  # two GPUs, 2 images each
        assert train.check_mix_group(recipe(8, 1), 8, 8, on_device) == 8  # seed 002 on 8 GPUs
    assert train.check_mix_group(recipe(8, 1), 8, 1, True) == 8  # 8 hosts x 1 GPU: gathered over the workers
    with pytest.raises(config.ConfigError, match="gives 1 on each of the 8 workers"):
        train.check_mix_group(recipe(8, 1), 8, 1, False)  # on the host each worker mixes its own image
    argv = ["--demo", "--set", f"data.demo_dir={tmp_path / 'd'}", "--set", "data.demo_patients=20", "--out",
            str(tmp_path / "runs"), "--batch-size", "2", "--weights", "none", "--size", "32", "--folds", "2"]
    with pytest.raises(SystemExit) as exc:
        train.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "mix.mosaic combines 4 images of one update, but train.batch_size 2 x train.accumulate 1 gives 2" in err
    assert "raise --batch-size or train.accumulate, or set mix.mosaic=0" in err


def test_the_new_settings_parse_with_their_types():
    cfg = _parse("--set", "model.csra_temperatures=[1, 99]", "--set", "model.csra_heads=2", "--set",
                 "optim.head_weight_decay=0.05", "--set", "optim.head_warmup_lr=1e-3")
    assert cfg["model"]["csra_temperatures"] == [1, 99] and cfg["optim"]["head_weight_decay"] == 0.05
    assert cfg["optim"]["head_warmup_lr"] == 1e-3 and isinstance(cfg["optim"]["head_warmup_lr"], float)
    defaults = _parse()
    assert defaults["model"]["ml_decoder_train_queries"] is False and defaults["optim"]["clip_norm"] == 0.0
    assert defaults["train"]["freeze_backbone_epochs"] == 0 and defaults["model"]["csra_heads"] == 1


def test_a_run_that_failed_before_its_first_epoch_does_not_block_a_rerun(tmp_path, capsys):
    """ImageNet weights offline: the first run stops at the model build, after writing config.yaml; the
    next run with another config used to be refused until the folder was deleted."""
    from cxrlt.train import kfold as train

    argv = ["--demo", "--out", str(tmp_path / "runs"), "--name", "r", "--weights", "imagenet", "--folds", "2",
            "--set", f"data.demo_dir={tmp_path / 'data'}", "--set", "data.demo_patients=40",
            "--backbone", "efficientnetv2-b0", "--size", "32"]
    for size in ("32", "48"):  # the second run changes input.size
        argv[argv.index("--size") + 1] = size
        with pytest.raises(SystemExit) as stop:
            train.main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "python -m cxrlt weights --backbone efficientnetv2-b0" in err and "another config" not in err
    assert "size: 48" in (tmp_path / "runs" / "r" / "config.yaml").read_text()


def test_the_schema_knows_each_losss_parameters_as_the_losses_define_them():
    from cxrlt.config import schema
    from cxrlt.model import losses

    assert sorted(schema.LOSS_PARAMS) == sorted(losses.LOSSES)
    for name, (defaults, _) in losses.LOSSES.items():
        extra = {"s"} if name == "ldam" else set()  # ldam's scale under its old name
        assert set(schema.LOSS_PARAMS[name]) == set(defaults) | extra, name
    assert set(schema.LOSS_COMMON_PARAMS) == set(losses._COMMON)


def test_an_unknown_loss_parameter_is_refused_before_any_data_are_read(tmp_path, capsys):
    """`--set loss.params.scale=30` for focal used to end in a ValueError traceback when the first fold built its loss."""
    from cxrlt.train import kfold as train

    with pytest.raises(config.ConfigError, match="loss focal has no parameter loss.params.gama; did you mean "
                                                 "loss.params.gamma"):
        config.load(None, {"loss.params.gama": "1.5"})
    missing = tmp_path / "no_such_labels.csv"  # never read: the config check comes first
    with pytest.raises(SystemExit) as stop:
        train.main(["--labels", str(missing), "--set", "loss.name=ldam", "--set", "loss.params.s_cale=30",
                    "--out", str(tmp_path / "runs")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "loss ldam has no parameter loss.params.s_cale; did you mean loss.params.scale?" in err
    assert "no_such_labels" not in err
