from __future__ import annotations

from pathlib import Path

import pytest

from dr_ray.config import Config, ConfigError, config_hash, dump_yaml, load_config, to_dict

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def test_defaults_yaml_matches_dataclass_defaults():
    # configs/defaults.yaml documents every key; it must say exactly what the code does.
    assert load_config(CONFIGS / "defaults.yaml") == Config()


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_loads(name):
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, Config)


def test_delta_and_overrides_apply_in_order(tmp_path):
    delta = tmp_path / "x.yaml"
    delta.write_text("preprocess:\n  size: 1024\n  clahe:\n    clip_limit: 3.0\n")
    cfg = load_config(delta, ["preprocess.size=768", "preprocess.extra_maps=[canny, tophat]"],
                      defaults=CONFIGS / "defaults.yaml")
    assert cfg.preprocess.size == 768  # --set wins over the delta file
    assert cfg.preprocess.clahe.clip_limit == 3.0  # delta wins over defaults
    assert cfg.preprocess.clahe.tile_grid == 8  # untouched keys keep their defaults
    assert cfg.preprocess.extra_maps == ("canny", "tophat")


def test_unknown_key_names_its_path_and_suggests(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preprocess:\n  clahe:\n    clip_limt: 2.0\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    msg = str(e.value)
    assert "preprocess.clahe.clip_limt" in msg
    assert "did you mean 'clip_limit'" in msg


def test_unknown_section_and_override():
    with pytest.raises(ConfigError, match=r"'preproces'.*did you mean 'preprocess'"):
        load_config(None, ["preproces.size=1"])
    with pytest.raises(ConfigError, match="ray.batch_sise.*did you mean 'batch_size'"):
        load_config(None, ["ray.batch_sise=4"])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("preprocess.size=abc", "preprocess.size='abc': expected an integer"),
        ("preprocess.size=true", "preprocess.size=True: expected an integer"),
        ("preprocess.size=8", "preprocess.size=8: must be in 32..4096"),
        ("preprocess.clahe.channel=blue", "preprocess.clahe.channel='blue'"),
        ("preprocess.extra_maps=[sobel]", "preprocess.extra_maps"),
        ("data.dataset=kaggle", "data.dataset='kaggle': must be one of"),
        ("data.folds=1", "data.folds=1"),
        ("ray.batch_size=0", "ray.batch_size=0"),
        ("preprocess.quality.min_brightness=0.9", "max_brightness"),
        ("data.dataset=eyepacs", "data.root"),  # a real dataset needs a root
        ("train_vessels.input_mode=lab", "train_vessels.input_mode='lab': must be one of rgb, green_clahe"),
        ("train_lesions.model=swin_unet", "train_lesions.patch_size=256: must be a multiple of 224"),
        ("pseudo_labels.lesion_kinds=[ma, xx]", "pseudo_labels.lesion_kinds"),
        ("vessels.patch_px=4", "vessels.patch_px=4: must be an odd int"),
    ],
)
def test_bad_values_fail_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert fragment in str(e.value)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(None, ["preprocess.size"])
    with pytest.raises(ConfigError, match="empty key"):
        load_config(None, ["preprocess..size=3"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_configs_are_frozen():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.preprocess.size = 3  # type: ignore[misc]


def test_dump_roundtrip_and_hash(tmp_path):
    cfg = load_config(None, ["preprocess.size=1024", "preprocess.extra_maps=[canny]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(path, defaults=CONFIGS / "defaults.yaml")
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)
    assert config_hash(cfg.preprocess) == config_hash(again.preprocess)
    assert config_hash(cfg.preprocess) != config_hash(Config().preprocess)


def test_vessel_input_modes_match_the_training_code():
    from dr_ray.config.schema import VESSEL_INPUT_MODES
    from dr_ray.imaging.enhance import INPUT_MODES

    assert VESSEL_INPUT_MODES == INPUT_MODES


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["preprocess.decode_device=gpu"], "preprocess.decode_device='gpu': must be 'cpu' or 'cuda'"),
        (["preprocess.decode_device=cuda"], "preprocess.decode_gpus_per_task=0.0: must be > 0 with "
                                            "preprocess.decode_device=cuda"),
        (["preprocess.decode_device=cuda", "preprocess.decode_gpus_per_task=9"],
         "preprocess.decode_gpus_per_task=9.0: must be in 0..8"),
        (["preprocess.decode_gpus_per_task=-0.5"], "preprocess.decode_gpus_per_task=-0.5: must be in 0..8"),
    ],
)
def test_decode_device_settings_are_checked(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert fragment in str(e.value)


def test_cuda_decode_config_loads_and_changes_the_preprocess_hash():
    cfg = load_config(None, ["preprocess.decode_device=cuda", "preprocess.decode_gpus_per_task=0.25"])
    assert (cfg.preprocess.decode_device, cfg.preprocess.decode_gpus_per_task) == ("cuda", 0.25)
    assert Config().preprocess.decode_device == "cpu" and Config().preprocess.decode_gpus_per_task == 0.0
    # nvJPEG's pixels differ slightly from libjpeg's: a resumed run must not mix the two
    assert config_hash(cfg.preprocess) != config_hash(Config().preprocess)
