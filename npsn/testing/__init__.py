"""Helpers for testing code against npsn, and npsn against PyTorch.

:mod:`npsn.testing.torch_reference`: the PyTorch mirror of any npsn model (:func:`~npsn.testing.torch_reference.to_torch`)
and the checks that both compute the same. PyTorch is imported only when one of its functions runs; npsn never needs it.
"""
