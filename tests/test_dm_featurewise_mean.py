"""featurewise_mean.py: the mean a trainer subtracts, taken after the trainer's own recipe
steps (the shared recipe flags, trainer mode); expected values worked out by hand on tiny
synthetic PNGs."""
import cv2
import numpy as np
import pytest

import dm_dataset
import dm_featurewise_mean as fm
import dm_flags
import dm_recipe
from dm_recipe import Recipe

# 4x4 8-bit images. HALF: 8 pixels of 10, 8 of 20. THIRDS: 4 of 0, 8 of 100, 4 of 200.
HALF = np.repeat(np.array([[10, 10, 20, 20]], np.uint8), 4, axis=0)
THIRDS = np.array([[0, 0, 0, 0], [100] * 4, [100] * 4, [200] * 4], np.uint8)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "train" / "neg"
    d.mkdir(parents=True)
    cv2.imwrite(str(d / "half.png"), HALF)
    cv2.imwrite(str(d / "thirds.png"), THIRDS)
    return tmp_path / "train"


def _paths(folder) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.png"))


def _run(capsys, *argv) -> str:
    capsys.readouterr()
    assert fm.main([*map(str, argv)]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def _as_is(*argv) -> list:
    """The image trainer's recipe (no equalisation) at the 4x4 images' own size: the
    image as it is, for the hand-worked means."""
    return [*argv, "--trainer", "image", "--img-size", "4", "4"]


def test_plain_mean_is_the_pixel_mean(folder, capsys):
    # (8*10 + 8*20 + 8*100 + 4*200) / 32 = 57.5; 8-bit: rescale 1
    assert _run(capsys, *_as_is(folder)) == \
        "--img-size 4 4 --rescale-factor 1 --featurewise-mean 57.50"
    assert _run(capsys, *_as_is(folder, "--rescale-factor", "0.5", "--print", "mean")) == "28.75"


def test_equalize_hist_gives_the_mean_of_the_equalised_images(folder, capsys):
    """OpenCV's equalisation maps the lowest level to 0 and level v to
    round(255 * (pixels <= v minus the lowest level's) / (pixels minus the lowest level's)):
    HALF -> 0, 255 (mean 127.5); THIRDS -> 0, round(255 * 8/12) = 170, 255 (mean 148.75)."""
    want = (8 * 255 + 8 * 170 + 4 * 255) / 32            # 138.125
    mean, factor, bits = dm_dataset.mean_pixel(
        _paths(folder), Recipe(img_size=None, equalize_hist=True))
    assert (mean, factor, bits) == (want, 1.0, 8)
    assert _run(capsys, *_as_is(folder, "--equalize-hist", "--print", "mean")) == f"{want:.2f}"
    assert _run(capsys, *_as_is(folder, "--equalize-hist")) == \
        f"--img-size 4 4 --equalize-hist --rescale-factor 1 --featurewise-mean {want:.2f}"
    assert _run(capsys, folder, "--trainer", "patch", "--img-size", "4", "4",
                "--print", "mean") == f"{want:.2f}"         # the patch trainer's default


def test_img_scale_gives_the_mean_of_the_scaled_images(folder, capsys):
    """--img-scale 100: HALF x 100/20 -> 50, 100 (mean 75); THIRDS x 100/200 -> 0, 50, 100
    (mean 50); the rescale factor is then 1, whatever the bit depth."""
    want = (16 * 75 + 16 * 50) / 32                       # 62.5
    assert _run(capsys, *_as_is(folder, "--img-scale", "100", "--print", "mean")) == "62.50"
    assert _run(capsys, *_as_is(folder, "-ic", "100", "--print", "rescale")) == "1"
    # 16-bit copies scale to the same values (each image by its own maximum)
    cv2.imwrite(str(folder / "neg" / "half.png"), HALF.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "neg" / "thirds.png"), THIRDS.astype(np.uint16) * 257)
    mean, factor, bits = dm_dataset.mean_pixel(_paths(folder), Recipe(img_size=None,
                                                                               img_scale=100.0))
    assert mean == pytest.approx(want, abs=1e-4) and factor == 1.0 and bits == 16


def test_img_scale_accepts_mixed_depths_which_one_rescale_cannot_fit(folder, capsys):
    cv2.imwrite(str(folder / "neg" / "half.png"), HALF.astype(np.uint16) * 257)
    assert fm.main(_as_is(str(folder))) == 2
    assert _run(capsys, *_as_is(folder, "--img-scale", "100", "--print", "mean")) == "62.50"


def test_img_size_weighs_every_image_alike(tmp_path, capsys):
    """A 2x2 image of 10 and an 8x8 image of 40 (constant images stay constant under the
    cubic resize): at 4x4, (10 + 40) / 2, not (4*10 + 64*40) / 68 as they are."""
    d = tmp_path / "set"
    d.mkdir()
    cv2.imwrite(str(d / "small.png"), np.full((2, 2), 10, np.uint8))
    cv2.imwrite(str(d / "large.png"), np.full((8, 8), 40, np.uint8))
    assert _run(capsys, d, "--trainer", "image", "--img-size", "4", "4", "--print", "mean") \
        == "25.00"


def test_centring_flags_are_accepted_and_ignored(folder, capsys):
    assert _run(capsys, *_as_is(folder, "--featurewise-mean", "99", "--featurewise-center",
                                "--print", "mean")) == "57.50"


def test_the_printed_flags_centre_the_trainer_s_images(folder, capsys):
    """Pasted into a trainer, the printed line gives a recipe whose network inputs average 0
    over the training images (to the printed 2 decimals)."""
    line = _run(capsys, folder, "--trainer", "patch", "--equalize-hist", "--img-size", "4", "4")
    cfg = dm_flags.parse("patch", ["a", "b", "c", *line.split()])
    recipe = dm_recipe.recipe_from_flags(cfg, channels=1)
    assert recipe.equalize_hist and recipe.featurewise_center and recipe.img_size == (4, 4)
    x = np.stack([dm_recipe.preprocess(img, recipe) for img in (HALF, THIRDS)])
    assert abs(float(x.mean())) <= 0.005 + 1e-5     # 138.125 printed as 138.12


@pytest.mark.parametrize("kind", ["patch", "image"])
def test_the_default_is_the_named_trainer_s_recipe(folder, capsys, kind):
    """With no recipe flag, the printed line centres the images of that trainer's own
    default recipe (the patch trainer: 256x256 and equalised; the image trainer:
    1152x896), which the raw images' mean (57.50) would not."""
    line = _run(capsys, folder, "--trainer", kind)
    assert line.startswith("--rescale-factor 1 --featurewise-mean ")     # no flag added
    cfg = dm_flags.parse(kind, ["a", "b", "c", *line.split()]
                         + (["--patch-model-state", "m.keras"] if kind == "image" else []))
    recipe = dm_recipe.recipe_from_flags(cfg, channels=1)
    assert recipe.img_size == tuple(fm.TRAINER_DEFAULTS[kind]["img_size"])
    x = np.stack([dm_recipe.preprocess(img, recipe) for img in (HALF, THIRDS)])
    assert abs(float(x.mean())) <= 0.005 + 1e-5
    if kind == "patch":      # equalised: far from the raw 57.50
        assert recipe.equalize_hist and recipe.featurewise_mean > 100
    assert fm.trainer_recipe(kind).equalize_hist == (kind == "patch")


def test_the_trainer_must_be_named(folder, capsys):
    with pytest.raises(SystemExit) as e:
        fm.main([str(folder)])
    assert e.value.code == 2
    assert "the following arguments are required: --trainer" in capsys.readouterr().err


def test_every_documented_command_parses():
    """The README's and docs' featurewise_mean.py commands (code blocks) name a trainer and
    parse, so a user who pastes one gets the mean of the trainer they will run."""
    import pathlib
    import re
    import shlex
    repo = pathlib.Path(__file__).resolve().parents[1]
    found = 0
    for page in [repo / "README.md", *sorted(repo.glob("docs/*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            for m in re.finditer(r"featurewise_mean\.py ([^)\n]*)", re.sub(r"\\\n", " ", block)):
                fm.build_parser().parse_args(shlex.split(m.group(1)))   # SystemExit: wrong
                found += 1
    assert found >= 2           # the README's RESCALE and MEAN lines
