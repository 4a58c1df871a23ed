"""Datasets (TU, OGB), the data mirror, cross-validation splits and the Lightning DataModule."""
