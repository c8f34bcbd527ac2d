"""Evaluation: Sliced Wasserstein distance, spectral diagnostics of D, 2-D mode coverage, the in-training evaluator,
and the class-aware measures.

Nothing here changes training: every measure draws from its own seeded generators.

The class-aware measures use npsn's own CIFAR-10 classifier (:mod:`npsn.eval.classifier`, trained by
:mod:`npsn.eval.classifier_training` through ``scripts/train_classifier.py``): the Fréchet distance
between real and generated images on its penultimate features (:mod:`npsn.eval.frechet`; FID's
formula, *not* the Inception FID of papers) and the GAN-test accuracy of a class-conditional
generator (:mod:`npsn.eval.gan_test`).
"""
from npsn.eval.classifier import Classifier, load_classifier
from npsn.eval.frechet import frechet_distance, frechet_distance_of_features
from npsn.eval.gan_test import class_aware_measures, gan_test_accuracy
