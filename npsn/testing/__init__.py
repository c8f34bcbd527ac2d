"""Helpers for testing code against npsn, and npsn against PyTorch (imported lazily; npsn never needs it)."""
