"""Data: manifests, BIDS import, validation, preprocessing, the preprocessing cache, splits, planted data.

No Ray here; torch only for the cached samples' ``Dataset``.
"""
