import dataclasses

import pytest

from cm_trancaf.config import (PRESETS, ConfigError, apply_overrides, get_preset, load_config,
                               save_config)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_json(name, tmp_path):
    cfg = get_preset(name)
    save_config(cfg, tmp_path / "config.json")
    assert load_config(tmp_path / "config.json") == cfg


def test_paper_preset_has_the_paper_numbers():
    cfg = get_preset("paper")
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.steps) == (1e-5, 8, 40000)
    assert cfg.data.roi_size == (64, 64, 64) and cfg.data.spacing == (3.0, 3.0, 3.0)
    assert cfg.mtn.lam == 10.0 and cfg.train.lambda_focal == 0.1 and cfg.data.ratio == 0.5
    assert cfg.scn.kernel == (9, 9, 5)


def test_overrides_are_typed_and_unknown_keys_fail():
    cfg = apply_overrides(get_preset("cpu"), ["train.lr=0.5", "maunet.pab=False",
                                              "data.enhance=none", "data.spacing=(2, 2, 3)"])
    assert cfg.train.lr == 0.5 and cfg.maunet.pab is False and cfg.data.enhance == "none"
    assert cfg.data.spacing == (2.0, 2.0, 3.0)
    for bad in ["train.lrr=1", "train.lr='x'", "maunet.pab=3", "train=1", "nokey", "data.spacing=(1,2)"]:
        with pytest.raises(ConfigError):
            apply_overrides(cfg, [bad])
    with pytest.raises(ConfigError):
        get_preset("nope")


def test_grid_options_that_do_not_fit_together_fail_at_the_override():
    cmr = get_preset("cmr_cpu")
    assert cmr.data.fit_slice_mm > 0 and cmr.data.grid_axes == "image"
    with pytest.raises(ConfigError, match="fit_slice_mm needs data.grid_axes=image"):
        apply_overrides(cmr, ["data.grid_axes=world"])
    world = apply_overrides(cmr, ["data.grid_axes=world", "data.fit_slice_mm=0.0"])
    assert world.data.grid_axes == "world" and world.data.fit_slice_mm == 0
    for bad in ["data.grid_axes=scanner", "data.fit_slice_mm=-1.0"]:
        with pytest.raises(ConfigError):
            apply_overrides(cmr, [bad])


def test_every_config_field_is_read_by_the_code():
    """No field is silently ignored: each one of every section is read (``.<field>``) somewhere in
    the package outside ``config.py``."""
    import re
    from pathlib import Path

    import cm_trancaf
    from cm_trancaf.config import ExperimentConfig
    source = "\n".join(p.read_text(encoding="utf-8") for p in Path(cm_trancaf.__file__).parent.rglob("*.py")
                       if p.name != "config.py")
    unread = [f"{section.name}.{f.name}" for section in dataclasses.fields(ExperimentConfig)
              if dataclasses.is_dataclass(getattr(ExperimentConfig(), section.name))
              for f in dataclasses.fields(getattr(ExperimentConfig(), section.name))
              if not re.search(rf"\.{f.name}\b", source)]
    assert unread == []


def test_run_wide_settings_are_one_section_and_networks_have_their_own_optimiser():
    cfg = apply_overrides(get_preset("tiny"), ["run.seed=3", "train_localizer.lr=0.1"])
    assert cfg.run.seed == 3 and cfg.train_localizer.lr == 0.1 and cfg.train.lr != 0.1
    for moved in ["train.seed=1", "train_localizer.strategy=mirrored", "train.log_every=1",
                  "train_localizer.lambda_focal=1.0", "mtn.ratio=0.3"]:
        with pytest.raises(ConfigError, match="unknown key"):
            apply_overrides(cfg, [moved])
