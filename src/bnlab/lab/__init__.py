"""Experiments: each measures a claim about batch normalization and writes its results."""
