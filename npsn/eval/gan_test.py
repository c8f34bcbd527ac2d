"""GAN-test accuracy (Shmelkov, Schmid & Alahari, "How good is my GAN?", ECCV 2018), and the class-aware measures of a run.

GAN-test: a classifier trained on *real* images classifies images a conditional G drew for given
classes; the accuracy per intended class says whether G draws what it was asked for (high is
good; near the classifier's own test accuracy means "as recognizable as real images"). It says
nothing about diversity: a G that draws one perfect image per class scores 100%, which is why the
Fréchet distance on the same classifier's features (:mod:`npsn.eval.frechet`) is reported beside it.
"""
import numpy as np

from npsn.backend import get_array_module, to_numpy
from npsn.data.pixels import pixels_to_unit
from npsn.eval.frechet import frechet_distance_of_features


def gan_test_accuracy(predicted, intended, num_classes):
    """Per-class and mean accuracy of predicted classes against the intended ones.

    Args:
        predicted: the classifier's arg-max classes (N,) (any integer dtype, host or device).
        intended: the classes G was asked for (N,).
        num_classes: K.
    Returns:
        ``{"gan_test_per_class": [acc_0, ..., acc_{K-1}] (None for a class with no image),
        "gan_test_mean": the mean of the per-class accuracies that exist}``.

    >>> gan_test_accuracy(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]), 3)
    {'gan_test_per_class': [0.5, 1.0, None], 'gan_test_mean': 0.75}
    """
    predicted, intended = to_numpy(predicted).astype(np.int64), to_numpy(intended).astype(np.int64)
    per_class = []
    for k in range(num_classes):
        mine = intended == k
        count = int(mine.sum())
        # accuracy_k = |{n : y_n = k, prediction_n = k}| / |{n : y_n = k}|
        per_class.append(float((predicted[mine] == k).sum()) / count if count else None)
    present = [a for a in per_class if a is not None]
    return {"gan_test_per_class": per_class, "gan_test_mean": float(np.mean(present)) if present else None}


def classifier_features_and_classes(classifier, images_uint8, chunk=500):
    """``(features (N, F), arg-max classes (N,))`` of uint8 NCHW images on the classifier's device, in eval mode."""
    xp = get_array_module(next(iter(classifier.parameters())).data)
    features, classes = [], []
    for i in range(0, images_uint8.shape[0], chunk):
        x = pixels_to_unit(images_uint8[i:i + chunk], xp)
        f = classifier.features(x)
        features.append(f)
        classes.append(classifier.head(f).argmax(axis=1))
    return xp.concatenate(features), xp.concatenate(classes)


def class_aware_measures(classifier, real_uint8, fake_uint8, fake_labels=None, real_labels=None):
    """The classifier-feature Fréchet distance of real vs generated images, and GAN-test accuracy for a conditional G.

    Args:
        classifier: a trained :class:`~npsn.eval.classifier.Classifier`.
        real_uint8, fake_uint8: uint8 NCHW images (generated ones as saved: quantized to pixels).
        fake_labels: the classes the generated images were drawn for (N,), or None (unconditional).
        real_labels: the real images' classes (N,), or None.
    Returns:
        ``{"classifier_fd": d^2}``; with ``real_labels`` also ``"real_accuracy"`` (the classifier's
        accuracy on these real images, GAN-test's reference value); with ``fake_labels``
        :func:`gan_test_accuracy`'s entries.
    """
    real_features, real_classes = classifier_features_and_classes(classifier, real_uint8)
    fake_features, fake_classes = classifier_features_and_classes(classifier, fake_uint8)
    result = {"classifier_fd": frechet_distance_of_features(real_features, fake_features)}
    if real_labels is not None:
        result["real_accuracy"] = float((to_numpy(real_classes) == to_numpy(real_labels)).mean())
    if fake_labels is not None:
        result.update(gan_test_accuracy(fake_classes, fake_labels, classifier.num_classes))
    return result
