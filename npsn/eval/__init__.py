"""Evaluation: Sliced Wasserstein distance, spectral diagnostics of D, 2-D mode coverage, the in-training evaluator.

Nothing here changes training: every measure draws from its own seeded generators.
"""
