import pytest
import yaml

from deepmetric.config import ConfigError, RunConfig, apply_overrides, build_config, load_config, save_config


def test_defaults_are_the_embedded_mnist_demo():
    cfg = build_config({})
    assert (cfg.data.dataset, cfg.model.backbone, cfg.loss.name) == ("mnist", "small_cnn", "proxy_anchor")
    assert cfg.eval.ks == [1, 2, 4, 8]


def test_unknown_key_names_dotted_path_and_valid_keys():
    with pytest.raises(ConfigError) as e:
        build_config({"train": {"epohcs": 3}})
    msg = str(e.value)
    assert "train.epohcs" in msg and "epochs" in msg and "\n" not in msg


def test_wrong_type_and_bad_choice_are_errors_with_value():
    with pytest.raises(ConfigError, match=r"train\.epochs.*'three'"):
        build_config({"train": {"epochs": "three"}})
    with pytest.raises(ConfigError, match=r"train\.amp.*bf16"):
        build_config({"train": {"amp": "fp8"}})


def test_unregistered_names_list_choices():
    with pytest.raises(ConfigError, match=r"loss\.name.*proxy_anchor"):
        build_config({"loss": {"name": "proxy_ancor"}})
    with pytest.raises(ConfigError, match=r"data\.dataset"):
        build_config({"data": {"dataset": "imagenet"}})


def test_overrides_are_parsed_as_yaml_and_validated():
    cfg = build_config({}, ["train.epochs=3", "optim.lr=0.01", "eval.ks=[1,5]", "synthesis.name=null"])
    assert cfg.train.epochs == 3 and cfg.optim.lr == pytest.approx(0.01) and cfg.eval.ks == [1, 5]
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_batch_must_be_multiple_of_samples_per_class():
    with pytest.raises(ConfigError, match="multiple of data.samples_per_class"):
        build_config({"data": {"batch_size": 30, "samples_per_class": 4}})


def test_roundtrip_through_yaml(tmp_path):
    cfg = build_config({"seed": 3, "loss": {"name": "triplet", "params": {"margin": 0.2}}})
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["loss"]["params"] == {"margin": 0.2}


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "l.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "l.yaml")


def test_every_recipe_in_configs_validates():
    from pathlib import Path

    recipes = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))
    assert recipes, "configs/ holds the recipes"
    for p in recipes:
        assert isinstance(load_config(p), RunConfig), p


def test_samples_per_class_is_rejected_with_the_random_sampler_and_defaults_for_m_per_class():
    with pytest.raises(ConfigError, match=r"data.samples_per_class=2 has no effect with data.sampler=random"):
        build_config({"data": {"sampler": "random", "batch_size": 180, "samples_per_class": 2}})
    assert build_config({"data": {"sampler": "random"}}).data.samples_per_class is None
    assert build_config({}).data.samples_per_class == 16


def test_val_split_none_means_train_on_all_classes_and_keep_the_last_epoch(tmp_path):
    for spelling in ("none", "None", None):
        assert build_config({"data": {"val_split": spelling}}).data.val_split is None
    cfg = build_config({"data": {"val_split": "none", "sampler": "random", "crop_scale": [0.2, 1.0]}})
    save_config(cfg, tmp_path / "c.yaml")  # the saved config (null, no samples_per_class) loads back
    assert load_config(tmp_path / "c.yaml") == cfg


def test_new_recipe_keys_are_validated():
    with pytest.raises(ConfigError, match=r"crop_scale must be \[min, max\]"):
        build_config({"data": {"crop_scale": [0.5, 0.2]}})
    with pytest.raises(ConfigError, match="optim.warmup"):
        build_config({"optim": {"warmup": "frozen"}})
    with pytest.raises(ConfigError, match="model.head_norm"):
        build_config({"model": {"head_norm": "layernorm"}})
    with pytest.raises(ConfigError, match="train.grad_clip_value"):
        build_config({"train": {"grad_clip_value": 0}})
