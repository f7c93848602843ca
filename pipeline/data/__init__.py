"""Data: sources, manifests, splits, and the one decoding/preprocessing path every stage shares."""
