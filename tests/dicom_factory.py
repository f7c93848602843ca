"""Write small, valid CT DICOM slices for tests, so no test depends on real scans: the pipeline's
own writer (`pipeline.data.dicom.write_ct_slice`), with its options for odd files."""

from pipeline.data.dicom import write_ct_slice

__all__ = ["write_ct_slice"]
