"""Evaluation: distances, rank metrics, flip, query expansion, re-ranking and the metrics log."""
