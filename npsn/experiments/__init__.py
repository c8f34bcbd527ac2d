"""Experiments built on the whole library: training loops and the measures that judge them together.

They sit above :mod:`npsn.gan` (models, losses, updates) and :mod:`npsn.eval` (measures), and
nothing below imports them. :mod:`npsn.experiments.toy`: SN on PacGAN's 2-D mixtures.
"""
