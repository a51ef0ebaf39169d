"""Figures from results (dicts read from results files); never imports models or data."""
