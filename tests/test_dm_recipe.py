"""dm_recipe's flag mapping: the one recipe-flag surface (dm_cli.add_recipe_flags) to a Recipe
through recipe_from_flags and apply_overrides, in both modes, with --no-X switching off."""
import argparse
import dataclasses

import pytest

import dm_cli
import dm_recipe
from dm_recipe import Recipe

STORED = Recipe(img_size=(64, 48), img_scale=200.0, rescale_factor=0.5, equalize_hist=True,
                channels=1, featurewise_center=True, featurewise_mean=30.0, input_bits=16)


def _parser(trainer: bool, img_size: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    dm_cli.add_recipe_flags(p, trainer=trainer, img_size=img_size)
    return p


def test_off_switches_an_optional_item_off_and_none_keeps_it():
    r = dm_recipe.apply_overrides(STORED, img_scale=dm_cli.OFF, rescale_factor=None)
    assert r == dataclasses.replace(STORED, img_scale=None)
    r = dm_recipe.apply_overrides(STORED, rescale_factor=dm_cli.OFF, input_bits=dm_cli.OFF)
    assert r == dataclasses.replace(STORED, rescale_factor=None, input_bits=None)
    with pytest.raises(TypeError, match="cannot be switched off.*equalize_hist"):
        dm_recipe.apply_overrides(STORED, equalize_hist=dm_cli.OFF)


def test_override_flags_no_x_switch_the_stored_value_off():
    p = _parser(trainer=False)
    args = p.parse_args(["--no-img-scale", "--no-rescale-factor"])
    assert args.img_scale is dm_cli.OFF and args.rescale_factor is dm_cli.OFF
    assert dm_recipe.recipe_from_flags(args, base=STORED) == dataclasses.replace(
        STORED, img_scale=None, rescale_factor=None)
    # nothing given: the stored recipe; the last of --X / --no-X wins
    assert dm_recipe.recipe_from_flags(p.parse_args([]), base=STORED) == STORED
    args = p.parse_args(["-nic", "-ic", "7", "--rescale-factor", "2", "--no-rescale-factor"])
    assert dm_recipe.recipe_from_flags(args, base=STORED) == dataclasses.replace(
        STORED, img_scale=7.0, rescale_factor=None)
    args = p.parse_args(["--featurewise-mean", "9", "--no-equalize-hist", "--input-bits", "8",
                         "--img-size", "32", "24"])
    assert dm_recipe.recipe_from_flags(args, base=dataclasses.replace(
        STORED, featurewise_center=False)) == dataclasses.replace(
        STORED, featurewise_mean=9.0, equalize_hist=False, input_bits=8, img_size=(32, 24))


def test_trainer_flags_no_x_unset_and_build_a_new_recipe():
    p = _parser(trainer=True)
    args = p.parse_args(["-ic", "4095", "-nic", "--rescale-factor", "2", "--no-rescale-factor",
                         "-is", "32", "24", "--featurewise-mean", "12"])
    assert args.img_scale is None and args.rescale_factor is None
    assert dm_recipe.recipe_from_flags(args, channels=1) == Recipe(
        img_size=(32, 24), channels=1, featurewise_mean=12.0)   # unset switches: Recipe's
    assert "--input-bits" not in p.format_help()     # trainers record the depth themselves


def test_fields_take_precedence_over_flags():
    """A tool's own decision (heatmap_score's recipe size, convert_checkpoint's --rescale-factor
    0) replaces the flag's value; with a base, None keeps the base's."""
    args = _parser(trainer=False).parse_args(["--img-size", "10", "10", "--rescale-factor", "0"])
    r = dm_recipe.recipe_from_flags(args, base=STORED, img_size=None, rescale_factor=dm_cli.OFF)
    assert r == dataclasses.replace(STORED, rescale_factor=None)
    args = _parser(trainer=True).parse_args(["--featurewise-center", "--img-size", "10", "10"])
    assert dm_recipe.recipe_from_flags(args, featurewise_center=False, featurewise_mean=0.0) == \
        Recipe(img_size=(10, 10))


def test_img_size_can_be_left_to_the_tool():
    p = _parser(trainer=False, img_size=False)
    assert "--img-size" not in p.format_help() and "--no-img-scale" in p.format_help()
    dm_cli.add_img_size(p, help="the tool's own meaning of it", short=True)
    assert p.parse_args(["--img-size", "5", "6"]).img_size == [5, 6]


def test_off_survives_copies():
    import copy
    import pickle
    assert copy.deepcopy(dm_cli.OFF) is dm_cli.OFF
    assert pickle.loads(pickle.dumps(dm_cli.OFF)) is dm_cli.OFF
    assert repr(dm_cli.OFF) == "OFF"
