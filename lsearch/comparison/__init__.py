"""Comparisons of configurations over shared seeds, on the held-out test set."""
