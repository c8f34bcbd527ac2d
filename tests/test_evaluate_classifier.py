"""scripts/evaluate.py with the classifier: the Fréchet distance on its features, GAN-test accuracy, and without one."""
import json
import os

import numpy as np
import pytest

from fake_cifar import write_fake_cifar
from npsn.data.cifar10 import load_cifar10
from npsn.data.pixels import pixels_to_unit, unit_to_pixels
from npsn.eval.classifier import load_classifier
from npsn.eval.evaluation import cycle_labels, generate
from npsn.eval.frechet import frechet_distance_of_features
from npsn.eval.gan_test import class_aware_measures, gan_test_accuracy
from script_runner import run_main

TINY_GAN = ["--g-ch", "16", "--d-ch", "8", "--batch-size", "8", "--sample-every", "0", "--log-every", "1"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_fake_cifar(str(tmp_path_factory.mktemp("cifar")), n_per_batch=40, seed=0)


@pytest.fixture(scope="module")
def classifier_dir(archive, tmp_path_factory):
    """A tiny classifier trained for a few steps (one epoch of 6 batches) through the script."""
    out = str(tmp_path_factory.mktemp("classifier") / "classifier")
    argv = ["--data", archive, "--widths", "4,8,8", "--batch-size", "32", "--epochs", "1", "--no-progress", "--out", out]
    assert run_main("train_classifier.py", *argv) == 0
    return out


@pytest.fixture(scope="module")
def gan_run(archive, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("gan") / "run")
    assert run_main("train_cifar.py", "--data", archive, *TINY_GAN, "--iterations", "2", "--out", run) == 0
    return run


def test_evaluate_reports_the_classifier_distance_next_to_swd(gan_run, archive, classifier_dir, tmp_path, capsys):
    out = str(tmp_path / "eval.json")
    assert run_main("evaluate.py", gan_run, "--data", archive, "--n", "24", "--classifier", classifier_dir,
                    "--out", out) == 0
    printed = capsys.readouterr().out
    assert "SWD x 1e3" in printed and "classifier-feature Frechet distance" in printed and "not Inception FID" in printed
    result = json.load(open(out))
    assert result["classifier"] == os.path.abspath(os.path.join(classifier_dir, "checkpoint.npz"))
    assert np.isfinite(result["classifier_fd"]) and result["classifier_fd"] > 0
    assert "gan_test_mean" not in result  # an unconditional run has no intended classes

    # the same numbers from the library: the real subset and the generated images evaluate.py uses
    import npsn.eval.evaluation as evaluation
    from npsn.gan.models import sample_latent
    config, G, _, _ = evaluation.load_run(gan_run)
    images, labels = load_cifar10(archive, "test")
    real = evaluation.real_subset(images, 24, 0)
    fake = unit_to_pixels(generate(G, sample_latent(np.random.default_rng([0, 5]), 24, config["z_dim"])))
    net, _ = load_classifier(classifier_dir)
    expected = frechet_distance_of_features(net.features(pixels_to_unit(real, np)), net.features(pixels_to_unit(fake, np)))
    assert result["classifier_fd"] == pytest.approx(expected, rel=1e-9)
    accuracy = float((net.logits(pixels_to_unit(real, np)).argmax(axis=1) == evaluation.real_subset(labels, 24, 0)).mean())
    assert result["real_accuracy"] == accuracy


def test_without_a_classifier_evaluate_says_how_to_train_one(gan_run, archive, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no runs/classifier here
    assert run_main("evaluate.py", gan_run, "--data", archive, "--n", "8", "--out", str(tmp_path / "e.json")) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.out.splitlines() if "train_classifier.py" in line]
    assert len(notes) == 1 and notes[0].startswith("note: no classifier at runs/classifier")
    assert all(line.startswith("evaluate: ") for line in captured.err.splitlines()), captured.err  # its progress
    assert "classifier_fd" not in json.load(open(tmp_path / "e.json"))


def test_the_default_classifier_location_is_used_when_present(gan_run, archive, classifier_dir, tmp_path, monkeypatch):
    import shutil
    shutil.copytree(classifier_dir, tmp_path / "runs" / "classifier")
    monkeypatch.chdir(tmp_path)
    assert run_main("evaluate.py", gan_run, "--data", archive, "--n", "8", "--out", str(tmp_path / "e.json")) == 0
    assert np.isfinite(json.load(open(tmp_path / "e.json"))["classifier_fd"])


class FakeConditionalG:
    """A 'generator' that returns, for class y, a real test image of class y (no parameters): GAN-test must then
    be the classifier's own per-class accuracy on those images."""

    num_classes = 10
    training = False

    def __init__(self, images, labels):
        self.by_class = [images[labels == k] for k in range(10)]

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, z, y):
        counts = {}
        out = []
        for k in y.tolist():
            pool = self.by_class[k]
            out.append(pool[counts.get(k, 0) % len(pool)])
            counts[k] = counts.get(k, 0) + 1
        return pixels_to_unit(np.stack(out), np)


def test_gan_test_of_a_fake_conditional_generator_is_the_classifier_accuracy(archive, classifier_dir):
    images, labels = load_cifar10(archive, "test")
    net, _ = load_classifier(classifier_dir)
    G = FakeConditionalG(images, labels)
    y = cycle_labels(30, 10)
    fake = unit_to_pixels(generate(G, np.zeros((30, 4), np.float32), labels=y))
    result = class_aware_measures(net, fake, fake, fake_labels=y, real_labels=y)
    predicted = net.logits(pixels_to_unit(fake, np)).argmax(axis=1)
    expected = [float((predicted[y == k] == k).mean()) for k in range(10)]
    assert result["gan_test_per_class"] == expected
    assert result["gan_test_mean"] == pytest.approx(np.mean(expected))
    assert result["real_accuracy"] == pytest.approx(float((predicted == y).mean()))
    assert result["classifier_fd"] == pytest.approx(0.0, abs=1e-6)  # the same images on both sides


def test_gan_test_accuracy_counts_each_class_alone():
    predicted = np.array([2, 2, 2, 0, 1, 1], dtype=np.int32)
    intended = np.array([2, 2, 1, 0, 1, 0], dtype=np.int32)
    result = gan_test_accuracy(predicted, intended, 4)
    assert result["gan_test_per_class"] == [0.5, 0.5, 1.0, None]
    assert result["gan_test_mean"] == pytest.approx(2 / 3)


def test_evaluate_reports_gan_test_accuracy_of_a_conditional_run(archive, classifier_dir, tmp_path, capsys):
    run = str(tmp_path / "conditional")
    assert run_main("train_cifar.py", "--data", archive, "--conditional", *TINY_GAN, "--iterations", "2",
                    "--out", run) == 0
    out = str(tmp_path / "eval.json")
    assert run_main("evaluate.py", run, "--data", archive, "--n", "30", "--classifier", classifier_dir,
                    "--out", out) == 0
    printed = capsys.readouterr().out
    assert "GAN-test accuracy" in printed and "airplane" in printed and "GAN-test mean" in printed
    result = json.load(open(out))
    assert result["class_names"][0] == "airplane" and len(result["gan_test_per_class"]) == 10

    # recomputed from the library: image i is drawn for class i mod 10, then classified
    import npsn.eval.evaluation as evaluation
    from npsn.gan.models import sample_latent
    config, G, _, _ = evaluation.load_run(run)
    y = cycle_labels(30, 10)
    fake = unit_to_pixels(generate(G, sample_latent(np.random.default_rng([0, 5]), 30, config["z_dim"]), labels=y))
    net, _ = load_classifier(classifier_dir)
    predicted = net.logits(pixels_to_unit(fake, np)).argmax(axis=1)
    expected = [float((predicted[y == k] == k).mean()) for k in range(10)]
    assert result["gan_test_per_class"] == expected
    assert result["gan_test_mean"] == pytest.approx(np.mean(expected))


def test_a_classifier_of_other_classes_is_refused_for_a_conditional_run(archive, tmp_path, capsys):
    from npsn.data.cifar10 import MinibatchStream
    from npsn.eval.classifier_training import ClassifierConfig, ClassifierRun
    five = ClassifierRun(ClassifierConfig(widths=(4, 8, 8), num_classes=5), str(tmp_path))
    five.stream = MinibatchStream(10, 2, 0)
    five.save(test_accuracy=None)
    run = str(tmp_path / "conditional")
    assert run_main("train_cifar.py", "--data", archive, "--conditional", *TINY_GAN, "--iterations", "1",
                    "--out", run) == 0
    capsys.readouterr()
    assert run_main("evaluate.py", run, "--data", archive, "--n", "10", "--classifier", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the run has 10 classes but the classifier 5" in err
    assert not os.path.exists(os.path.join(run, "eval.json"))
