"""How well a detector separates and outlines: metrics, intervals, scans, localisation, audit."""
