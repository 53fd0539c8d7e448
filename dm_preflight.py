"""Checks of the images to score against what the model was trained on.

Checks of the images a tool is about to score against what the model was trained on,
made before any scoring: likely mistakes are refused in one line naming the flag that
forces them (docs/reliability.md, bad-input table).

- a patch classifier given images far larger than its patches (whole mammograms would
  each be shrunk to one patch): `--allow-whole-images`;
- a colour image (its channels really differ) for these grey-mammogram models:
  `--allow-colour`;
- an image far smaller than the model's input (under half of it in height or width; for
  the sliding window, under half a patch): a thumbnail or the wrong file, enlarged into
  nonsense: `--allow-small-images`;
- a blank image (every pixel the same value: a failed export, an empty scan):
  `--allow-blank`;
- 16-bit PNGs whose values never exceed 4095 (12-bit data stored in 16 bits, the classic
  export mistake) for a model trained on full-range 16-bit images: `--stored-bits N`
  says how many bits the PNGs use (12: converted with `--convert-bit-depth`, as a
  DICOM with BitsStored 12 is; 16: scored as they are). Blank images are left out of
  this test (an all-zero image is blank, not 12-bit data).

Image sizes and channel counts come from the file headers. Only these files are decoded:
those whose header says colour (to tell a colour photo from a grey image saved as RGB);
those that may be blank, i.e. small ones (at most `DECODE_PIXELS` pixels) and those
compressed over `BLANK_RATIO` times (a constant image compresses to almost nothing, a
mammogram 2-5 times; an uncompressed blank BMP or DICOM is not caught); and for the
12-bit test a sample of at most `SAMPLE` 16-bit PNGs.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np

import dm_pixels
from dm_errors import InputError

SAMPLE = 8            # 16-bit PNGs decoded for the 12-bit test
LARGE = 2.0           # a patch model refuses images more than this many patches high or wide
SMALL = 0.5           # images under this fraction of the model's size (height or width)
DECODE_PIXELS = 1 << 18   # images of at most this many pixels are decoded for the blank test
BLANK_RATIO = 20      # ... and larger ones compressed at least this many times
COLOUR_LEVEL = 0.03   # channels differing by more than this fraction of the range ...
COLOUR_AREA = 0.01    # ... on more than this fraction of the pixels: a colour image
MAX_12BIT = 4095


class SuspectInputError(InputError):
    """An input that would be scored, but almost certainly wrongly; a flag forces it."""


@dataclass(frozen=True)
class Header:
    """What a file's header says, without decoding the pixels (None: unknown)."""

    height: int | None = None
    width: int | None = None
    channels: int | None = None
    bits: int | None = None
    format: str | None = None        # "png", "jpeg", "bmp" or "dicom"


@dataclass(frozen=True)
class Allow:
    """The flags that force likely-wrong inputs through."""

    colour: bool = False             # --allow-colour
    whole_images: bool = False       # --allow-whole-images
    stored_bits: int | None = None   # --stored-bits N
    small: bool = False              # --allow-small-images
    blank: bool = False              # --allow-blank


def read_header(path: str) -> Header:
    """Size, channels and bit depth of a PNG, JPEG, BMP or DICOM file from its header;
    fields it cannot tell are None (the reader refuses broken files later)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 26:
                w, h = struct.unpack(">II", head[16:24])
                ch = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(head[25])
                return Header(h, w, ch, 16 if head[24] == 16 else 8, "png")
            if head[:2] == b"\xff\xd8":
                return _jpeg_header(f)
            if head[:2] == b"BM" and len(head) >= 30:
                w, h = struct.unpack("<ii", head[18:26])
                bpp = struct.unpack("<H", head[28:30])[0]
                return Header(abs(h), w, 3 if bpp >= 24 else None, 8, "bmp")
    except OSError:
        return Header()
    if os.path.splitext(path)[1].lower() in dm_pixels.DICOM_EXTS or head[128:132] == b"DICM":
        try:
            ds = dm_pixels.read_dicom_header(path)
            return Header(int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1)),
                          int(ds.get("BitsStored", 0) or 0) or None, "dicom")
        except Exception:  # noqa: BLE001 - unreadable: the reader says why, later
            return Header(format="dicom")
    return Header()


def _jpeg_header(f) -> Header:
    """Walk the JPEG segments to the frame header (SOFn): height, width, components."""
    f.seek(2)
    while True:
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return Header(format="jpeg", bits=8)
        code = marker[1]
        if code == 0xFF:                  # fill byte
            f.seek(-1, os.SEEK_CUR)
            continue
        if 0xD0 <= code <= 0xD9 or code == 0x01:   # markers without a length
            continue
        (length,) = struct.unpack(">H", f.read(2))
        if 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):
            _, h, w, n = struct.unpack(">BHHB", f.read(6))
            return Header(h, w, n, 8, "jpeg")
        f.seek(length - 2, os.SEEK_CUR)


def is_colour(arr: np.ndarray) -> bool:
    """True when the first three channels differ by more than COLOUR_LEVEL of the range on
    more than COLOUR_AREA of the pixels (a grey image saved as RGB, even as JPEG, does not)."""
    if arr.ndim != 3 or arr.shape[2] < 3:
        return False
    step = max(1, int(np.sqrt(arr.shape[0] * arr.shape[1] / 65536)))   # ~64k pixels suffice
    c = arr[::step, ::step, :3].astype(np.float32)
    top = 65535.0 if arr.dtype == np.uint16 else 255.0 if arr.dtype == np.uint8 else \
        max(float(np.abs(c).max()), 1e-6)
    spread = c.max(axis=2) - c.min(axis=2)
    return float(np.mean(spread > COLOUR_LEVEL * top)) > COLOUR_AREA


def _decode_colour(path: str, header: Header) -> np.ndarray | None:
    """The file's channels as stored (not converted to grey), or None if unreadable."""
    try:
        return dm_pixels.read_stored(path)
    except dm_pixels.ImageReadError:   # the reader reports it, later
        return None


def check_colour(paths: Sequence[str], headers: Sequence[Header], allow: Allow) -> None:
    """Refuse the first image whose channels really differ (`--allow-colour` forces it)."""
    if allow.colour:
        return
    for p, h in zip(paths, headers):
        if h.channels is not None and h.channels >= 3:
            arr = _decode_colour(p, h)
            if arr is not None and is_colour(arr):
                raise SuspectInputError(
                    f"{p}: a colour image, but the model takes grey mammograms (it would "
                    "score the image's grey conversion); add --allow-colour to score it anyway")


def how_many(n: int, total: int) -> str:
    """`the only image is`, `1 of 3 images is`, `2 of 3 images are`."""
    if total == 1:
        return "the only image is"
    return f"{n} of {total} images {'is' if n == 1 else 'are'}"


def check_patch_sizes(paths: Sequence[str], headers: Sequence[Header], model_path: str,
                      train_size: Sequence[int], allow: Allow) -> None:
    """Refuse images more than LARGE times a patch model's training patch in height or
    width (`--allow-whole-images` forces them)."""
    if allow.whole_images:
        return
    th, tw = int(train_size[0]), int(train_size[1])
    big = [(p, h) for p, h in zip(paths, headers)
           if h.height and h.width and (h.height > LARGE * th or h.width > LARGE * tw)]
    if big:
        p, h = big[0]
        raise SuspectInputError(
            f"{p}: a {h.height}x{h.width} image, but {model_path} is a patch classifier "
            f"trained on {th}x{tw} patches: the whole image would be shrunk to one patch "
            f"({how_many(len(big), len(paths))} over {LARGE:g} times the patch size). "
            "Score mammograms with a whole-image model or map them with "
            "ddsm_train/heatmap_score.py; add --allow-whole-images to score them anyway")


def check_small(paths: Sequence[str], headers: Sequence[Header], size, what: str,
                allow: Allow) -> None:
    """Refuse images under SMALL of `size` (H, W; a side that is None is not checked) in
    height or width: `what` names that size (`--allow-small-images` forces them)."""
    if allow.small or size is None:
        return
    th, tw = size

    def small(h: Header) -> bool:
        return bool(h.height and h.width) and ((th is not None and h.height < SMALL * th)
                                               or (tw is not None and h.width < SMALL * tw))
    found = [(p, h) for p, h in zip(paths, headers) if small(h)]
    if found:
        p, h = found[0]
        raise SuspectInputError(
            f"{p}: a {h.height}x{h.width} image, far smaller than {what} "
            f"({how_many(len(found), len(paths))} under {SMALL:g} of it in height or width): "
            "a thumbnail or the wrong file would be enlarged and scored as if it were a "
            "mammogram; add --allow-small-images to score it anyway")


def _may_be_blank(path: str, h: Header) -> bool:
    """Worth decoding for the blank test: small, or compressed over BLANK_RATIO times."""
    if not (h.height and h.width):
        return False
    pixels = h.height * h.width * (h.channels or 1)
    if pixels <= DECODE_PIXELS:
        return True
    try:
        size = os.path.getsize(path)
    except OSError:
        return False
    return size * BLANK_RATIO <= pixels * (2 if (h.bits or 8) > 8 else 1)


def is_blank(arr: np.ndarray) -> bool:
    """Every pixel the same value (nothing to see)."""
    return arr.size > 0 and bool(np.min(arr) == np.max(arr))


def check_blank(paths: Sequence[str], headers: Sequence[Header], allow: Allow) -> None:
    """Refuse the first blank image (`--allow-blank` forces it); see the module doc for
    which files are decoded."""
    if allow.blank:
        return
    for p, h in zip(paths, headers):
        if _may_be_blank(p, h):
            arr = _decode_colour(p, h)
            if arr is not None and is_blank(arr):
                raise SuspectInputError(
                    f"{p}: a blank image (every pixel is {np.ravel(arr)[0]:g}): nothing to "
                    "score (a failed export or an empty file?); add --allow-blank to score "
                    "it anyway")


def stored_depths(paths: Sequence[str], headers: Sequence[Header], depths: Sequence[int | None],
                  model_path: str, model_bits: int | None, allow: Allow,
                  read=None) -> list[int | None]:
    """Each file's bit depth for the depth check (`dm_scoring.depth_groups`): the header's,
    with 16-bit PNGs taken as `--stored-bits` bits when given. Without it, and for a model
    trained on 16-bit images, a sample of the 16-bit PNGs is decoded: if none exceeds 4095,
    refuse (12-bit data in 16-bit files would score as a nearly black image)."""
    depths = list(depths)
    png16 = [i for i, h in enumerate(headers) if h.format == "png" and h.bits == 16]
    if allow.stored_bits is not None:
        for i in png16:
            depths[i] = int(allow.stored_bits)
        return depths
    if model_bits != 16 or not png16:
        return depths
    read = read or dm_pixels.read_image
    step = max(1, len(png16) // SAMPLE)
    sample = png16[::step][:SAMPLE]
    arrays = [read(paths[i]) for i in sample]
    peaks = [int(np.max(a)) for a in arrays if not is_blank(a)]   # blank: not 12-bit data
    if peaks and max(peaks) <= MAX_12BIT:
        others = f" (nor do those of the {len(sample) - 1} other 16-bit PNGs checked)" \
            if len(sample) > 1 else ""
        raise SuspectInputError(
            f"{paths[sample[0]]}: a 16-bit PNG whose values never exceed {MAX_12BIT}{others}: "
            f"12-bit data stored in 16 bits? {model_path} was trained on full-range 16-bit "
            "images, where this is nearly black; add --stored-bits 12 --convert-bit-depth to "
            "scale it to 16 bits, or --stored-bits 16 to score it as it is")
    return depths


def check_images(paths: Sequence[str], models: Sequence, recipes: Sequence, allow: Allow,
                 depths: Sequence[int | None], check_patches: bool = True,
                 reference: tuple[Sequence, str] | None = None) -> list[int | None]:
    """All the checks for `models` (`dm_scoring.LoadedModel`) with their `recipes`;
    returns the bit depths to score with (see `stored_depths`). An image is small next to
    each recipe's size, or next to `reference` ((H, W), what it is) when given."""
    paths = list(paths)
    headers = [read_header(p) for p in paths]
    if check_patches:
        for m in models:
            if m.kind == "patch" and m.train_size is not None:
                check_patch_sizes(paths, headers, m.path, m.train_size, allow)
    refs = [reference] if reference is not None else [
        (r.img_size, f"the {r.img_size[0]}x{r.img_size[1]} input of {m.path}")
        for m, r in zip(models, recipes) if r.img_size is not None]
    for size, what in refs:
        check_small(paths, headers, size, what, allow)
    check_colour(paths, headers, allow)
    check_blank(paths, headers, allow)
    # With img_scale every image is scaled by its own maximum: its depth does not matter.
    full16 = [m.path for m, r in zip(models, recipes) if r.img_scale is None
              and r.input_bits == 16]
    return stored_depths(paths, headers, depths, full16[0] if full16 else "the model",
                         16 if full16 else None, allow)
