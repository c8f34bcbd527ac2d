"""A small CIFAR-10 classifier built from npsn's own layers: the feature extractor of the class-aware measures.

The network (VGG-like, BatchNorm, channels-last inside, ~0.28 M parameters with the default widths
(32, 64, 128)) maps NCHW images in ``[-1, 1]`` (the GAN's range, :mod:`npsn.data.pixels`) to 10
logits::

    ToChannelsLast
    conv3x3(3 -> w1) BN ReLU                           32x32
    MaxPool2d(2)                                        -> 16x16
    conv3x3(w1 -> w2) BN ReLU, conv3x3(w2 -> w2) BN ReLU
    MaxPool2d(2)                                        -> 8x8
    conv3x3(w2 -> w3) BN ReLU, conv3x3(w3 -> w3) BN ReLU
    MaxPool2d(2)                                        -> 4x4
    AvgPool2d(4), Flatten                               -> features (N, w3)
    Linear(w3 -> 10)                                    -> logits

:meth:`Classifier.features` returns the penultimate features (after the global average pool) that
:mod:`npsn.eval.frechet` compares; :meth:`Classifier.predict` the class probabilities that GAN-test
accuracy (:mod:`npsn.eval.gan_test`) scores. :func:`cross_entropy` is the training loss with its
hand-written gradient; :func:`load_classifier` reads a checkpoint written by
``scripts/train_classifier.py`` (:mod:`npsn.eval.classifier_training`).
"""
import os

from npsn.backend import get_array_module
from npsn.gan.checkpoint import load_checkpoint, unflatten
from npsn.nn import AvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, ReLU, Sequential, ToChannelsLast
from npsn.nn.maxpool import MaxPool2d
from npsn.nn.module import Module

NUM_CLASSES = 10
DEFAULT_WIDTHS = (32, 64, 128)
#: Where ``scripts/train_classifier.py`` writes and ``scripts/evaluate.py`` looks by default.
DEFAULT_CLASSIFIER_DIR = "runs/classifier"
#: The ``kind`` entry of a classifier checkpoint's metadata (a GAN checkpoint has none).
CHECKPOINT_KIND = "npsn-cifar10-classifier"
INFERENCE_CHUNK = 500  # images per forward in features / predict


def is_count(value, low=1):
    """``value`` is an integer (not a bool) of at least ``low``: a width, a number of classes or of epochs."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def valid_widths(widths):
    """``widths`` are three channel counts, each a positive integer (what :class:`Classifier` builds)."""
    return isinstance(widths, (list, tuple)) and len(widths) == 3 and all(is_count(w) for w in widths)


def _conv_bn_relu(c_in, c_out, rng):
    return [Conv2d(c_in, c_out, 3, padding=1, bias=False, rng=rng), BatchNorm2d(c_out), ReLU()]


class Classifier(Module):
    """The CIFAR-10 classifier: ``forward(images) -> logits``, ``backward(dL/dlogits) -> dL/dimages``.

    Args:
        widths: (w1, w2, w3), the channels of the three stages.
        num_classes: K, the logits' size.
        rng: NumPy generator for the initial weights.

    Shapes: images (N, 3, H, W) in [-1, 1] (H, W multiples of 8; 32 for CIFAR-10) -> logits (N, K).
    Sub-modules: ``body`` (images -> features (N, w3)) and ``head`` (Linear(w3, K)); backward runs
    them in reverse (head, then body), each layer's backward derived in its own docstring.

    >>> import numpy as np
    >>> net = Classifier(widths=(4, 8, 8), rng=np.random.default_rng(0))
    >>> x = np.zeros((2, 3, 32, 32), dtype=np.float32)
    >>> net(x).shape, net.features(x).shape, net.predict(x).shape
    ((2, 10), (2, 8), (2, 10))
    """

    def __init__(self, widths=DEFAULT_WIDTHS, num_classes=NUM_CLASSES, rng=None):
        super().__init__()
        w1, w2, w3 = (int(w) for w in widths)
        self.widths, self.num_classes = (w1, w2, w3), int(num_classes)
        self.body = Sequential(
            ToChannelsLast(),
            *_conv_bn_relu(3, w1, rng), MaxPool2d(2),
            *_conv_bn_relu(w1, w2, rng), *_conv_bn_relu(w2, w2, rng), MaxPool2d(2),
            *_conv_bn_relu(w2, w3, rng), *_conv_bn_relu(w3, w3, rng), MaxPool2d(2),
            AvgPool2d(4), Flatten(),
        )
        self.head = Linear(w3, self.num_classes, rng=rng)

    def forward(self, images):
        return self.head(self.body(images))

    def backward(self, grad_logits):
        return self.body.backward(self.head.backward(grad_logits))

    def _in_eval(self, images, fn, chunk):
        xp = get_array_module(images)
        was_training = self.training
        self.eval()
        try:
            return xp.concatenate([fn(images[i:i + chunk]) for i in range(0, images.shape[0], chunk)])
        finally:
            self.train(was_training)

    def features(self, images, chunk=INFERENCE_CHUNK):
        """The penultimate features (N, w3) of images (N, 3, 32, 32) in [-1, 1], in eval mode, ``chunk`` at a time."""
        return self._in_eval(images, self.body, chunk)

    def logits(self, images, chunk=INFERENCE_CHUNK):
        """The logits (N, K) in eval mode, ``chunk`` images at a time (no cache is kept for a backward)."""
        return self._in_eval(images, self, chunk)

    def predict(self, images, chunk=INFERENCE_CHUNK):
        """Class probabilities (N, K): the softmax of :meth:`logits`."""
        return softmax(self.logits(images, chunk))

    def extra_repr(self):
        return f"widths={self.widths}, num_classes={self.num_classes}"


def softmax(logits):
    """Row-wise softmax of (N, K) logits, shifted by each row's maximum (exp never overflows)."""
    xp = get_array_module(logits)
    # p_k = exp(l_k - max l) / sum_j exp(l_j - max l)
    e = xp.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(logits, labels):
    r"""Mean cross-entropy of (N, K) logits against integer labels (N,), and its gradient.

    .. math::
        L = \frac1N \sum_n \Big(\log \sum_k e^{l_{nk}} - l_{n y_n}\Big), \qquad
        \frac{\partial L}{\partial l_{nk}} = \frac1N \big(p_{nk} - [k = y_n]\big),

    with p = softmax(l): the derivative of log-sum-exp is the softmax, that of -l_{ny} the negated one-hot.
    Computed with the row maximum subtracted (log-sum-exp is shift-invariant), as PyTorch's
    ``F.cross_entropy``.

    Returns:
        ``(loss, grad)``: a 0-d array on the logits' device and dL/dlogits (N, K).

    >>> import numpy as np
    >>> loss, grad = cross_entropy(np.zeros((2, 4)), np.array([0, 3]))
    >>> float(loss) == float(np.log(4)), grad[0]
    (True, array([-0.375,  0.125,  0.125,  0.125]))
    """
    xp = get_array_module(logits)
    n, k = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)
    # log sum_k exp(l_k)  (after the shift)
    log_norm = xp.log(xp.exp(shifted).sum(axis=1))
    one_hot = xp.arange(k) == labels[:, None]
    # L = mean_n (logsumexp(l_n) - l_{n, y_n})
    loss = (log_norm - (shifted * one_hot).sum(axis=1)).mean()
    # dL/dl = (softmax(l) - onehot(y)) / N
    grad = (xp.exp(shifted - log_norm[:, None]) - one_hot) / n
    return loss, grad.astype(logits.dtype, copy=False)


class ClassifierError(Exception):
    """A classifier checkpoint is missing or unreadable (a one-line message that says what to do)."""


HOW_TO_TRAIN = ("train one with `python scripts/train_classifier.py --data cifar-10-python.tar.gz` "
                f"(about 40 minutes on one CPU core; it writes {DEFAULT_CLASSIFIER_DIR}/)")


def classifier_checkpoint_path(path):
    """``path`` if it is a file, else ``path/checkpoint.npz``."""
    return path if os.path.isfile(path) else os.path.join(path, "checkpoint.npz")


def load_classifier(path, device="cpu"):
    """The classifier saved at ``path`` (a checkpoint file or the run folder holding ``checkpoint.npz``), in eval mode.

    Returns:
        ``(classifier, meta)``: meta holds ``config`` (the training configuration), ``epoch`` and
        ``test_accuracy`` (the last epoch's).
    Raises:
        ClassifierError: no such file, not an npsn classifier checkpoint, or damaged.
    """
    checkpoint = classifier_checkpoint_path(path)
    if not os.path.isfile(checkpoint):
        raise ClassifierError(f"no classifier at {path}; {HOW_TO_TRAIN}, or pass --classifier PATH")
    try:
        arrays, meta = load_checkpoint(checkpoint)
    except Exception as exc:  # zip, JSON or key errors from a truncated or foreign file
        raise ClassifierError(f"{checkpoint}: cannot read the classifier ({type(exc).__name__}: {exc}); "
                              f"retrain it ({HOW_TO_TRAIN})") from None
    if not isinstance(meta, dict) or meta.get("kind") != CHECKPOINT_KIND:
        raise ClassifierError(f"{checkpoint} is not an npsn classifier checkpoint (a GAN run?); "
                              f"pass the classifier's folder, or {HOW_TO_TRAIN}")
    config = meta.get("config", {})
    widths = config.get("widths", DEFAULT_WIDTHS) if isinstance(config, dict) else None
    num_classes = config.get("num_classes", NUM_CLASSES) if isinstance(config, dict) else None
    if not valid_widths(widths) or not is_count(num_classes, 2):
        raise ClassifierError(f"{checkpoint}: its configuration is damaged (widths {widths!r}, num_classes "
                              f"{num_classes!r}: three positive integers and one of at least 2 expected); "
                              f"retrain it ({HOW_TO_TRAIN})")
    net = Classifier(widths=tuple(widths), num_classes=num_classes)
    try:
        net.load_state_dict(unflatten("model", arrays))
    except (KeyError, ValueError, TypeError) as exc:
        raise ClassifierError(f"{checkpoint}: its weights do not match its configuration ({exc}); "
                              f"retrain it ({HOW_TO_TRAIN})") from None
    return net.to(device).eval(), meta

