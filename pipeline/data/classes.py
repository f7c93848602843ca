"""The raw data's layout: the two classes (their names in manifests, splits and reports, their labels,
their folders) and where a slice's lesion mask lies. The anomaly class is label 1 (what a detector
flags)."""

from pathlib import PurePosixPath

HEALTHY, TUMOR = "healthy", "tumor"
CLASSES = (HEALTHY, TUMOR)  # index = label
FOLDERS = {HEALTHY: "Healthy", TUMOR: "Tumor"}  # class -> folder under the raw data
MASKS = "Masks"  # beside the class folders: Masks/<a slice's path below its class folder>.png


def mask_path(path: str) -> PurePosixPath:
    """Where the lesion mask of the slice at `path` (relative to the raw folder) lies, if it has one."""
    return PurePosixPath(MASKS, *PurePosixPath(path).parts[1:]).with_suffix(".png")
