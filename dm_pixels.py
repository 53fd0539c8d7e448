"""Reading image files into grey arrays (PNG, JPEG, BMP, DICOM) and writing PNGs.

Reading image files into grey arrays: PNG/JPEG/BMP and DICOM (modality rescale,
MONOCHROME1), the one decoder; header-only reads of a file's bit depth and size.
"""
from __future__ import annotations

import io
import os

import cv2
import numpy as np

import dm_output
from dm_errors import InputError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".dcm", ".dicom")


DICOM_EXTS = (".dcm", ".dicom")


class ImageReadError(InputError):
    """An image file could not be read; the message is '<path>: <problem>'."""


def _to_grey(img: np.ndarray, path: str) -> np.ndarray:
    """Colour (BGR/BGRA from cv2) to one grey channel, keeping the dtype."""
    if img.ndim == 2:
        return img
    if img.ndim == 3:
        if img.shape[2] == 1:
            return img[:, :, 0]
        if img.shape[2] == 2:           # grey + alpha
            return np.ascontiguousarray(img[:, :, 0])
        if img.shape[2] == 3:
            return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        if img.shape[2] == 4:
            return cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
    raise ImageReadError(f"{path}: unsupported image shape {img.shape}")


def _dicom_value_range(ds) -> tuple[float, float] | None:
    """Possible stored-value range from BitsStored/PixelRepresentation (None if unknown)."""
    bits = ds.get("BitsStored", None) or ds.get("BitsAllocated", None)
    if bits is None:
        return None
    bits = int(bits)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0 ** bits - 1


def _read_dicom(path: str, data: bytes) -> np.ndarray:
    """DICOM pixel data with modality rescale applied and MONOCHROME1 inverted (bright = dense)."""
    import pydicom  # deferred for --help (docs/modules.md)

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as e:  # noqa: BLE001 - any parse failure is a read error
        raise ImageReadError(f"{path}: not a readable DICOM file ({e})") from None
    if "PixelData" not in ds:
        raise ImageReadError(f"{path}: DICOM file has no pixel data")
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - missing codec, truncated data, ...
        raise ImageReadError(f"{path}: cannot decode DICOM pixel data ({e})") from None
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2GRAY)
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: expected a single 2-D frame, got pixel array of shape {arr.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    x = arr.astype(np.float64)
    if slope != 1.0 or intercept != 0.0:
        x = x * slope + intercept
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        # Invert within the range the stored bits allow (mapped through the rescale), so the
        # result does not depend on image content and stays in the same range.
        rng = _dicom_value_range(ds)
        if rng is None:
            lo, hi = float(arr.min()), float(arr.max())
        else:
            lo, hi = rng
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
        x = (lo + hi) - x
    if np.all(x == np.round(x)) and x.min() >= 0 and x.max() <= 65535:
        return x.astype(np.uint16)
    return x.astype(np.float32)


def _is_dicom_bytes(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image as a 2-D grey array at its native dtype.

    PNG/JPEG/BMP keep their bit depth (uint8/uint16; colour is converted to grey).
    DICOM (.dcm/.dicom or a 'DICM' preamble) gets the modality rescale and MONOCHROME1
    inversion; it is uint16 when integral and in range, else float32.
    """
    path = os.fspath(path)
    img = read_stored(path)
    if img.ndim == 2:
        return img
    img = _to_grey(img, path)
    if img.dtype not in (np.uint8, np.uint16, np.float32):
        img = img.astype(np.float32)
    return img


def read_stored(path: str | os.PathLike) -> np.ndarray:
    """The file's pixels as stored, colour channels kept (cv2's BGR order): the one decoder,
    under `read_image` and the colour check before scoring (dm_preflight)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except OSError as e:
        raise ImageReadError(f"{path}: cannot open ({e.strerror or e})") from None
    if not data:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    if os.path.splitext(path)[1].lower() in DICOM_EXTS or _is_dicom_bytes(data):
        return _read_dicom(path, data)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(f"{path}: cannot decode image (truncated, corrupt or unsupported format)")
    if img.ndim == 2 and img.dtype not in (np.uint8, np.uint16, np.float32):
        img = img.astype(np.float32)
    return img


def read_dicom_header(path: str | os.PathLike):
    """The one DICOM header read: the dataset with large values (the pixels) deferred.
    Raises ImageReadError naming the file when it cannot be parsed."""
    import pydicom  # deferred for --help (docs/modules.md)

    try:
        return pydicom.dcmread(str(path), defer_size=1024, force=True)
    except Exception as e:  # noqa: BLE001 - any parse failure is an unreadable file
        raise ImageReadError(f"{path}: unreadable DICOM ({type(e).__name__})") from None


def dicom_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(rows, cols) from a DICOM header without decoding its pixels."""
    ds = read_dicom_header(path)
    try:
        return int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as e:
        raise ImageReadError(f"{path}: cannot read DICOM header ({type(e).__name__}: {e})") from None


def header_bit_depth(path: str) -> int | None:
    """Bit depth from the file header without decoding (8/16; None for DICOM or unknown).

    Refuses files that cannot be images: missing, empty, or with a wrong signature.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise ImageReadError(f"{path}: cannot open ({e.strerror})") from None
    if not head:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    ext = os.path.splitext(path)[1].lower()
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        if len(head) < 26:
            raise ImageReadError(f"{path}: truncated PNG header")
        if _tail(path, 12)[4:8] != b"IEND":
            raise ImageReadError(f"{path}: truncated PNG (no end marker)")
        return 16 if head[24] == 16 else 8
    if head[:2] == b"\xff\xd8":
        if b"\xff\xd9" not in _tail(path, 16):
            raise ImageReadError(f"{path}: truncated JPEG (no end marker)")
        return 8
    if head[:2] == b"BM":
        return 8
    if ext in (".dcm", ".dicom") or head[128:132] == b"DICM":
        ds = read_dicom_header(path)
        if "PixelData" not in ds:
            raise ImageReadError(f"{path}: DICOM without pixel data")
        return None
    raise ImageReadError(f"{path}: not a PNG, JPEG, BMP or DICOM file (unknown signature)")


def _tail(path: str, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - n))
        return f.read()


def write_png(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write an 8- or 16-bit PNG (grey, or BGR for overlays) atomically: the one PNG writer
    (`dm_output.atomic_write`: temporary file, then rename)."""
    if img.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{path}: PNG needs uint8 or uint16 pixels, got {img.dtype}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
    if not ok:
        raise InputError(f"{path}: cannot encode an image of shape {img.shape} as PNG")
    dm_output.atomic_write(os.fspath(path), lambda f: f.write(buf.tobytes()))


def to_uint16(img: np.ndarray) -> np.ndarray:
    """Cast to uint16 without rescaling (values clipped to 0..65535), for 16-bit PNGs."""
    if img.dtype == np.uint16:
        return img
    return np.clip(np.rint(img) if img.dtype.kind == "f" else img, 0, 65535).astype(np.uint16)


def file_bit_depth(path: str) -> int | None:
    """Bits per pixel of an image file from its header: 8 or 16 for PNG/JPEG/BMP, the
    stored bits of an integer DICOM; None when unknown (float DICOM values)."""
    depth = header_bit_depth(path)
    if depth is not None:
        return depth
    ds = read_dicom_header(path)
    if float(ds.get("RescaleSlope", 1) or 1) != 1 or float(ds.get("RescaleIntercept", 0) or 0) != 0:
        return None
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or 0)
    return bits if 1 <= bits <= 16 else None
