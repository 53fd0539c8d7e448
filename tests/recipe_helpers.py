"""Test helpers: write small DICOM files and a miniature CBIS-DDSM tree from real CSV rows."""
from __future__ import annotations

import csv
import pathlib

import numpy as np


def write_dicom(path, arr: np.ndarray, photometric: str = "MONOCHROME2", slope=None,
                intercept=None, pixels: bool = True, bits_stored: int | None = None) -> str:
    """A minimal uncompressed single-frame grey DICOM (uint8 or uint16 pixels).

    `pixels=False` leaves out the pixel data; `slope`/`intercept` add a modality rescale.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = 8 * arr.dtype.itemsize
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if pixels:
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def copy_csv_rows(src: pathlib.Path, dst: pathlib.Path, n: int) -> list[dict]:
    """Copy the header and the first n records of a CSV (quoting kept, so embedded newlines survive)."""
    with open(src, newline="") as f:
        rows = list(csv.reader(f))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w", newline="") as f:
        csv.writer(f).writerows(rows[:n + 1])
    header = rows[0]
    return [dict(zip(header, r)) for r in rows[1:n + 1]]
