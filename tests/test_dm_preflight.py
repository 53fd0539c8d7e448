"""dm_preflight: file headers read without decoding, colour told from grey saved as RGB,
and the 12-bit sample test (issue 23); the refusals through predict.py are in test_predict."""
import cv2
import numpy as np
import pytest

import dm_pixels
import dm_preflight as pf
from recipe_helpers import write_dicom


def test_headers_give_size_channels_and_depth(tmp_path):
    grey16 = np.full((30, 20), 1000, np.uint16)
    rgb8 = np.zeros((30, 20, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "g16.png"), grey16)
    cv2.imwrite(str(tmp_path / "c8.png"), rgb8)
    cv2.imwrite(str(tmp_path / "c.jpg"), rgb8)
    cv2.imwrite(str(tmp_path / "g.jpg"), rgb8[..., 0])
    cv2.imwrite(str(tmp_path / "c.bmp"), rgb8)
    write_dicom(tmp_path / "d.dcm", grey16, bits_stored=12)
    h = {n: pf.read_header(str(tmp_path / n))
         for n in ("g16.png", "c8.png", "c.jpg", "g.jpg", "c.bmp", "d.dcm")}
    assert h["g16.png"] == pf.Header(30, 20, 1, 16, "png")
    assert h["c8.png"] == pf.Header(30, 20, 3, 8, "png")
    assert h["c.jpg"] == pf.Header(30, 20, 3, 8, "jpeg")
    assert h["g.jpg"] == pf.Header(30, 20, 1, 8, "jpeg")
    assert h["c.bmp"] == pf.Header(30, 20, 3, 8, "bmp")
    assert h["d.dcm"] == pf.Header(30, 20, 1, 12, "dicom")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert pf.read_header(str(tmp_path / "junk.png")) == pf.Header()


def test_colour_photo_versus_grey_saved_as_colour_jpeg(tmp_path):
    rng = np.random.default_rng(1)
    grey = cv2.GaussianBlur(rng.integers(0, 256, (64, 64)).astype(np.uint8), (5, 5), 0)
    cv2.imwrite(str(tmp_path / "g.jpg"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 75])
    assert not pf.is_colour(cv2.imread(str(tmp_path / "g.jpg"), cv2.IMREAD_UNCHANGED))
    photo = grey[..., None].repeat(3, 2).copy()
    photo[..., 2] = 255 - photo[..., 2]
    assert pf.is_colour(photo)
    marked = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    marked[:2, :2] = (0, 0, 255)                       # a tiny red mark: still grey
    assert not pf.is_colour(marked)
    assert not pf.is_colour(grey)


def test_twelve_bit_test_reads_only_a_sample(tmp_path):
    paths, headers = [], []
    for i in range(20):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), np.arange(3936, 4000, dtype=np.uint16).reshape(8, 8))
        paths.append(str(p))
        headers.append(pf.read_header(str(p)))
    read = []

    def reader(p):
        read.append(p)
        return cv2.imread(p, cv2.IMREAD_UNCHANGED)
    with pytest.raises(pf.SuspectInputError, match="never exceed 4095 .* 7 other"):
        pf.stored_depths(paths, headers, [16] * 20, "m.keras", 16, pf.Allow(), reader)
    assert len(read) == pf.SAMPLE
    # --stored-bits: no reading, every 16-bit PNG takes that depth
    read.clear()
    got = pf.stored_depths(paths, headers, [16] * 20, "m.keras", 16, pf.Allow(stored_bits=12),
                           reader)
    assert got == [12] * 20 and read == []
    # a model trained on 8-bit images, or one full-range image in the sample: no refusal
    assert pf.stored_depths(paths, headers, [16] * 20, "m", 8, pf.Allow(), reader) == [16] * 20
    cv2.imwrite(paths[0], np.arange(59936, 60000, dtype=np.uint16).reshape(8, 8))
    assert pf.stored_depths(paths, headers, [16] * 20, "m", 16, pf.Allow(), reader) == [16] * 20


def test_an_all_zero_16_bit_png_is_blank_not_12_bit_data(tmp_path):
    """Issue 31: an all-zero 16-bit PNG was called "12-bit data"; blank images are left out
    of that test and refused as blank (--allow-blank forces them)."""
    zero = tmp_path / "zero.png"
    cv2.imwrite(str(zero), np.zeros((40, 30), np.uint16))
    headers = [pf.read_header(str(zero))]
    assert pf.stored_depths([str(zero)], headers, [16], "m.keras", 16, pf.Allow()) == [16]
    with pytest.raises(pf.SuspectInputError, match=r"zero\.png: a blank image \(every pixel "
                                                   r"is 0\).*--allow-blank"):
        pf.check_blank([str(zero)], headers, pf.Allow())
    pf.check_blank([str(zero)], headers, pf.Allow(blank=True))


def test_blank_test_decodes_small_or_highly_compressed_files_only(tmp_path, monkeypatch):
    """A constant image compresses to almost nothing: a large file that does not is never
    decoded for the blank test (a mammogram costs no extra decode); one that does is."""
    rng = np.random.default_rng(0)
    big_noise = tmp_path / "noise.png"             # over DECODE_PIXELS, barely compressible
    cv2.imwrite(str(big_noise), rng.integers(0, 255, (600, 500), dtype=np.uint8))
    big_black = tmp_path / "black.png"
    cv2.imwrite(str(big_black), np.zeros((600, 500), np.uint8))
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), rng.integers(0, 255, (30, 40), dtype=np.uint8))
    decoded = []
    real = dm_pixels.read_stored
    monkeypatch.setattr(dm_pixels, "read_stored", lambda p: decoded.append(p) or real(p))
    paths = [str(big_noise), str(small)]
    pf.check_blank(paths, [pf.read_header(p) for p in paths], pf.Allow())
    assert decoded == [str(small)]
    with pytest.raises(pf.SuspectInputError, match=r"black\.png: a blank image"):
        pf.check_blank([str(big_black)], [pf.read_header(str(big_black))], pf.Allow())


def test_images_far_smaller_than_the_model_are_refused(tmp_path):
    """Issue 31: a 40x30 image was scored p(pos) = 1.0 without a word."""
    paths = []
    for name, shape in (("ok.png", (64, 48)), ("half.png", (32, 24)), ("tiny.png", (20, 30))):
        p = tmp_path / name
        cv2.imwrite(str(p), np.arange(shape[0] * shape[1], dtype=np.uint8).reshape(shape))
        paths.append(str(p))
    headers = [pf.read_header(p) for p in paths]
    pf.check_small(paths[:2], headers[:2], (64, 48), "the input", pf.Allow())  # half: fine
    with pytest.raises(pf.SuspectInputError, match=r"tiny\.png: a 20x30 image, far smaller "
                                                   r"than the input \(1 of 3 images.*"
                                                   r"--allow-small-images"):
        pf.check_small(paths, headers, (64, 48), "the input", pf.Allow())
    pf.check_small(paths, headers, (64, 48), "the input", pf.Allow(small=True))
    pf.check_small(paths, headers, None, "no size", pf.Allow())
    with pytest.raises(pf.SuspectInputError, match=r"half\.png.*\(2 of 3"):   # height only
        pf.check_small(paths, headers, (100, None), "--img-height 100", pf.Allow())
