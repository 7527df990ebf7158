"""Experiments built on cross-validation: many CVs on the same folds, compared honestly.

`compare` (is one run really better than another?); sweep, network pruning and transfer follow.
"""
