"""The CIFAR-10 classifier of npsn.eval.classifier: its layers and loss against PyTorch, augmentation, training script."""
import json
import os

import numpy as np
import pytest

from fake_cifar import write_fake_cifar
from gradcheck import numerical_gradient, relative_error
from npsn.eval import classifier_training
from npsn.eval.classifier import Classifier, ClassifierError, cross_entropy, load_classifier, softmax
from npsn.eval.classifier_training import PAD, augment, one_cycle_lr
from npsn.gan.checkpoint import load_checkpoint
from npsn.gan.rundir import log_records
from npsn.nn.maxpool import MaxPool2d
from script_runner import run_main

TINY = ["--widths", "4,8,8", "--batch-size", "32", "--no-progress"]


# --- the loss and the layers -----------------------------------------------------------------------------------

def test_cross_entropy_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((5, 4)) * 3, np.array([0, 3, 1, 1, 2])
    _, grad = cross_entropy(logits, labels)
    numeric = numerical_gradient(lambda: float(cross_entropy(logits, labels)[0]), logits)
    assert relative_error(grad, numeric) < 1e-7


def test_cross_entropy_is_stable_for_large_logits():
    loss, grad = cross_entropy(np.array([[1000.0, 0.0], [0.0, 1000.0]]), np.array([0, 0]))
    assert float(loss) == pytest.approx(500.0) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(softmax(np.array([[1000.0, 1000.0]])), [[0.5, 0.5]])


def test_cross_entropy_and_maxpool_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits, labels = rng.standard_normal((6, 10)), rng.integers(0, 10, 6)
    t = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(t, torch.tensor(labels))
    expected.backward()
    loss, grad = cross_entropy(logits, labels)
    assert float(loss) == pytest.approx(expected.item(), rel=1e-12)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-14)
    # small integers: many ties inside windows, where PyTorch's gradient goes to the first maximum
    for x in (rng.standard_normal((2, 6, 4, 3)), rng.integers(0, 3, (2, 6, 4, 3)).astype(np.float64)):
        pool = MaxPool2d(2)
        y = pool(x)
        g = rng.standard_normal(y.shape)
        tx = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
        ty = torch.nn.functional.max_pool2d(tx, 2)
        ty.backward(torch.tensor(g.transpose(0, 3, 1, 2).copy()))
        np.testing.assert_array_equal(y, ty.detach().numpy().transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(pool.backward(g), tx.grad.numpy().transpose(0, 2, 3, 1))


def torch_mirror(net):
    """The classifier in PyTorch (NCHW), with the npsn network's weights and statistics."""
    import torch
    T = torch.nn

    def cbr(i, o):
        return [T.Conv2d(i, o, 3, padding=1, bias=False), T.BatchNorm2d(o), T.ReLU()]

    w1, w2, w3 = net.widths
    mirror = T.Sequential(*cbr(3, w1), T.MaxPool2d(2), *cbr(w1, w2), *cbr(w2, w2), T.MaxPool2d(2),
                          *cbr(w2, w3), *cbr(w3, w3), T.MaxPool2d(2), T.AvgPool2d(4), T.Flatten(),
                          T.Linear(w3, net.num_classes)).double()
    ours = list(net.named_parameters()) + list(net.named_buffers())
    theirs = list(mirror.named_parameters()) + list(mirror.named_buffers())
    assert len(ours) == len(theirs)
    mirror.load_state_dict({name: torch.tensor(np.asarray(value.data if hasattr(value, "grad") else value))
                            for (name, _), (_, value) in zip(theirs, ours)})
    return mirror


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_classifier_matches_a_torch_mirror(mode):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    net = Classifier((4, 8, 8), rng=rng).to(dtype=np.float64)
    for m in net.modules():  # non-trivial BatchNorm parameters and statistics
        if type(m).__name__ == "BatchNorm2d":
            m.weight.data = rng.uniform(0.5, 1.5, m.num_features)
            m.bias.data = rng.standard_normal(m.num_features)
            m.running_mean, m.running_var = rng.standard_normal(m.num_features), rng.uniform(0.5, 2, m.num_features)
    mirror = torch_mirror(net)
    net.train(mode == "train"), mirror.train(mode == "train")
    x, labels = rng.uniform(-1, 1, (6, 3, 32, 32)), rng.integers(0, 10, 6)
    tx = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(mirror(tx), torch.tensor(labels))
    expected.backward()
    logits = net(x)
    loss, grad = cross_entropy(logits, labels)
    grad_x = net.backward(grad)
    assert float(loss) == pytest.approx(expected.item(), rel=1e-10)
    np.testing.assert_allclose(grad_x, tx.grad.numpy(), rtol=1e-8, atol=1e-14)
    for (name, p), (_, tp) in zip(net.named_parameters(), mirror.named_parameters()):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-8, atol=1e-13, err_msg=name)


def test_features_and_predict_are_eval_mode_and_chunked():
    rng = np.random.default_rng(3)
    net = Classifier((4, 8, 8), rng=rng)
    x = rng.uniform(-1, 1, (7, 3, 32, 32)).astype(np.float32)
    net(x)  # a training step's forward changes the running statistics
    before = [b.copy() for _, b in net.named_buffers()]
    features, probabilities = net.features(x, chunk=3), net.predict(x, chunk=2)
    assert net.training and all(np.array_equal(a, b) for a, b in zip(before, (b for _, b in net.named_buffers())))
    net.eval()
    np.testing.assert_allclose(features, net.body(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probabilities, softmax(net.head(net.body(x))), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


# --- augmentation and schedule -----------------------------------------------------------------------------------

def test_augment_is_a_padded_crop_and_a_flip():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (9, 3, 8, 8), dtype=np.uint8)
    out = augment(images, np.random.default_rng(7))
    draw = np.random.default_rng(7)
    offsets, flips = draw.integers(0, 2 * PAD + 1, size=(9, 2)), draw.random(9) < 0.5
    for n in range(9):
        padded = np.zeros((3, 8 + 2 * PAD, 8 + 2 * PAD), np.uint8)
        padded[:, PAD:-PAD, PAD:-PAD] = images[n]
        crop = padded[:, offsets[n, 0]:offsets[n, 0] + 8, offsets[n, 1]:offsets[n, 1] + 8]
        np.testing.assert_array_equal(out[n], crop[:, :, ::-1] if flips[n] else crop)
    assert out.dtype == np.uint8 and 0 < flips.sum() < 9


def test_one_cycle_peaks_then_reaches_zero():
    lrs = [one_cycle_lr(s, 100, 0.1, 0.2) for s in range(101)]
    assert max(lrs) == pytest.approx(0.1) and np.argmax(lrs) == 20 and lrs[-1] == 0 and lrs[0] == pytest.approx(0.01)
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:21])) and all(a > b for a, b in zip(lrs[20:100], lrs[21:101]))


# --- the training script -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_fake_cifar(str(tmp_path_factory.mktemp("cifar")), n_per_batch=40, seed=0)


@pytest.fixture(scope="module")
def trained(archive, tmp_path_factory):
    """A 2-epoch tiny classifier trained through the script."""
    out = str(tmp_path_factory.mktemp("classifier") / "run")
    assert run_main("train_classifier.py", "--data", archive, *TINY, "--epochs", "2", "--out", out) == 0
    return out


def test_training_writes_a_log_per_epoch_and_a_loadable_checkpoint(trained, archive):
    log = log_records(trained)
    assert [r["epoch"] for r in log] == [1, 2] and [r["iteration"] for r in log] == [6, 12]
    assert all(0 <= r["test_accuracy"] <= 1 and np.isfinite(r["train_loss"]) for r in log)
    config = json.load(open(os.path.join(trained, "config.json")))
    assert config["widths"] == [4, 8, 8] and config["data"] == os.path.abspath(archive)
    net, meta = load_classifier(trained)
    assert not net.training and meta["epoch"] == 2 and meta["test_accuracy"] == log[-1]["test_accuracy"]
    from npsn.data.cifar10 import load_cifar10
    images, labels = load_cifar10(archive, "test")
    assert classifier_training.accuracy(net, images, labels) == meta["test_accuracy"]


def test_interrupted_and_resumed_training_equals_the_uninterrupted_one(trained, archive, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    save = classifier_training.ClassifierRun.save

    def save_then_interrupt(run, test_accuracy):
        save(run, test_accuracy)
        raise KeyboardInterrupt

    monkeypatch.setattr(classifier_training.ClassifierRun, "save", save_then_interrupt)
    assert run_main("train_classifier.py", "--data", archive, *TINY, "--epochs", "2", "--out", out) == 130
    monkeypatch.setattr(classifier_training.ClassifierRun, "save", save)
    assert load_checkpoint(os.path.join(out, "checkpoint.npz"))[1]["epoch"] == 1
    assert run_main("train_classifier.py", "--resume", out, "--no-progress") == 0
    (a, meta_a), (b, meta_b) = (load_checkpoint(os.path.join(run, "checkpoint.npz")) for run in (trained, out))
    assert sorted(a) == sorted(b) and meta_a["augment_state"] == meta_b["augment_state"]
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    logs = [log_records(run) for run in (trained, out)]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in logs[0]] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in logs[1]]


def test_load_classifier_errors_say_what_to_do(trained, tmp_path):
    with pytest.raises(ClassifierError, match="train_classifier.py"):
        load_classifier(str(tmp_path / "nothing"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ClassifierError, match="cannot read"):
        load_classifier(str(tmp_path / "bad.npz"))
    from npsn.gan.checkpoint import save_checkpoint
    save_checkpoint(str(tmp_path / "gan.npz"), {"G/w": np.zeros(2)}, {"iteration": 1, "config": {}})
    with pytest.raises(ClassifierError, match="not an npsn classifier checkpoint"):
        load_classifier(str(tmp_path / "gan.npz"))
