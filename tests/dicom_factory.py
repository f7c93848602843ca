"""Write small, valid CT DICOM slices for tests, so no test depends on real scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_ct_slice(
    path: Path,
    hu: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = -1024.0,
    photometric: str = "MONOCHROME2",
    preamble: bool = True,
) -> Path:
    """Write `hu` (2-D) as one 16-bit CT slice with stored values round((hu - intercept) / slope).

    The stored values are unsigned when none is negative, signed otherwise; values that fit neither
    raise ValueError rather than wrap. With `preamble=False` the file starts at its File Meta group,
    with no preamble and no "DICM" prefix, as some old scanners write it.
    """
    hu = np.asarray(hu, dtype=np.float64)
    if hu.ndim != 2:
        raise ValueError(f"expected a 2-D slice, got shape {hu.shape}")
    stored = np.round((hu - intercept) / slope)
    signed = bool(stored.min() < 0)
    dtype = np.dtype("<i2" if signed else "<u2")
    info = np.iinfo(dtype)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError(f"stored values [{stored.min()}, {stored.max()}] do not fit 16 bits")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.PatientID = "TEST"
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.Rows, dataset.Columns = hu.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = int(signed)
    dataset.RescaleSlope = slope
    dataset.RescaleIntercept = intercept
    dataset.RescaleType = "HU"
    dataset.PixelData = stored.astype(dtype).tobytes()

    # pydicom 3: enforce_file_format=True writes preamble + "DICM" + a validated File Meta group;
    # False writes the dataset as-is, i.e. without preamble since this Dataset has none.
    dataset.save_as(path, enforce_file_format=preamble)
    return Path(path)
