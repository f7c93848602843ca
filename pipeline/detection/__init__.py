"""The detector: reconstruction, scores, healthy references, thresholds, maps, one object."""
