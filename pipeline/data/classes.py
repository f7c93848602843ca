"""The two classes: their names in manifests, splits and reports, their labels, and the folders a
dataset holds them in. The anomaly class is label 1 (what a detector flags)."""

HEALTHY, TUMOR = "healthy", "tumor"
CLASSES = (HEALTHY, TUMOR)  # index = label
FOLDERS = {HEALTHY: "Healthy", TUMOR: "Tumor"}  # class -> folder under the raw data
