"""The GPU code path of the class-conditional (issue 11) and data-parallel (issue 12) code, on the ``device`` fixture.

Each test runs on "cpu" and on "gpu" (real CuPy when usable, else the strict stand-in of
``tests/strict_cupy``, which raises on any implicit host conversion, NumPy-only name or keyword)
and compares with the CPU: the layers' forward and backward, a conditional training iteration,
the classifier's features and the class-aware measures, the data-parallel optimizer; and counts
the conditional cnn iteration's device work on the stand-in against the unconditional budget.
"""
import copy
import os

import numpy as np
import pytest
import strict_cupy

from npsn import backend
from npsn.backend import to_device, to_numpy
from npsn.gan.rundir import log_records

K = 10  # classes


def labels_for(n, seed=0):
    return np.random.default_rng(seed).integers(0, K, n).astype(np.int32)


def run_layer(layer, device, inputs, grad_out):
    """(output, input gradient or None, {name: parameter gradient}) on the host, of a copy of ``layer`` on ``device``.

    ``inputs``: host arrays (the first gets the gradient; integer ones are labels).
    """
    layer = copy.deepcopy(layer).to(device)
    on_device = [to_device(a, device) for a in inputs]
    out = layer(*on_device)
    grad_in = layer.backward(to_device(grad_out, device))
    grads = {name: to_numpy(p.grad) for name, p in layer.named_parameters() if p.grad is not None}
    host_in = None if grad_in is None else to_numpy(grad_in)
    return to_numpy(out), host_in, grads


def assert_layer_matches_cpu(make, device, inputs, grad_shape, rtol=1e-5, atol=1e-6):
    grad_out = np.random.default_rng(1).standard_normal(grad_shape).astype(np.float32)
    layer = make()  # one layer copied to each side (SpectralNorm's u is drawn from a global stream)
    expected = run_layer(layer, "cpu", inputs, grad_out)
    got = run_layer(layer, device, inputs, grad_out)
    np.testing.assert_allclose(got[0], expected[0], rtol=rtol, atol=atol)
    if expected[1] is None:
        assert got[1] is None
    else:
        np.testing.assert_allclose(got[1], expected[1], rtol=rtol, atol=atol)
    assert sorted(got[2]) == sorted(expected[2]) and expected[2]
    for name in expected[2]:
        np.testing.assert_allclose(got[2][name], expected[2][name], rtol=rtol, atol=atol, err_msg=name)


# --------------------------------------------------------------------------------------------- layers
def test_embedding_and_its_spectral_norm_on_the_device(device):
    from npsn.nn.embedding import Embedding
    from npsn.nn.spectral_norm import spectral_norm

    y = labels_for(12)
    assert_layer_matches_cpu(lambda: Embedding(K, 6, rng=np.random.default_rng(0)), device, [y], (12, 6))
    assert_layer_matches_cpu(lambda: spectral_norm(Embedding(K, 6, rng=np.random.default_rng(0))),
                             device, [y], (12, 6))


def test_conditional_batchnorm_on_the_device(device):
    from npsn.nn.conditional_batchnorm import CategoricalConditionalBatchNorm2d

    def make():
        bn = CategoricalConditionalBatchNorm2d(5, K)
        rng = np.random.default_rng(2)  # classes that differ (the initial tables are ones and zeros)
        bn.weight.data = rng.standard_normal((K, 5)).astype(np.float32)
        bn.bias.data = rng.standard_normal((K, 5)).astype(np.float32)
        return bn

    x = np.random.default_rng(3).standard_normal((8, 4, 4, 5)).astype(np.float32)
    assert_layer_matches_cpu(make, device, [x, labels_for(8)], x.shape, rtol=1e-4, atol=1e-5)


def test_projection_on_the_device(device):
    from npsn.nn.conditional import Projection
    from npsn.nn.embedding import Embedding
    from npsn.nn.linear import Linear
    from npsn.nn.spectral_norm import spectral_norm

    def make():
        rng = np.random.default_rng(4)
        return Projection(spectral_norm(Linear(6, 1, rng=rng)), spectral_norm(Embedding(K, 6, rng=rng)))

    h = np.random.default_rng(5).standard_normal((12, 6)).astype(np.float32)
    assert_layer_matches_cpu(make, device, [h, labels_for(12)], (12, 1))


def test_maxpool_on_the_device(device):
    from npsn.nn.maxpool import MaxPool2d

    x = np.random.default_rng(6).standard_normal((3, 4, 6, 5)).astype(np.float32)
    grad_out = np.random.default_rng(7).standard_normal((3, 2, 3, 5)).astype(np.float32)
    expected = run_layer(MaxPool2d(2), "cpu", [x], grad_out)
    got = run_layer(MaxPool2d(2), device, [x], grad_out)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_sync_batchnorm_with_one_process_on_the_device(device):
    from npsn.distributed.comm import SingleProcess
    from npsn.nn.batchnorm import BatchNorm2d
    from npsn.nn.sync_batchnorm import SyncBatchNorm2d

    def make():
        bn = SyncBatchNorm2d(5, SingleProcess())
        bn.weight.data = np.linspace(0.5, 1.5, 5, dtype=np.float32)
        bn.bias.data = np.linspace(-1, 1, 5, dtype=np.float32)
        return bn

    x = np.random.default_rng(8).standard_normal((6, 4, 4, 5)).astype(np.float32) * 3 + 1
    assert_layer_matches_cpu(make, device, [x], x.shape, rtol=1e-4, atol=1e-5)

    def plain():  # one rank: BatchNorm itself
        bn = BatchNorm2d(5)
        bn.weight.data, bn.bias.data = make().weight.data, make().bias.data
        return bn

    grad_out = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    sync, bn = run_layer(make(), device, [x], grad_out), run_layer(plain(), device, [x], grad_out)
    np.testing.assert_allclose(sync[0], bn[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sync[1], bn[1], rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from fake_cifar import write_fake_cifar

    from npsn.data.cifar10 import load_cifar10

    return load_cifar10(write_fake_cifar(str(tmp_path_factory.mktemp("cifar")), n_per_batch=20, seed=0))


def conditional_trainer(data, device, out_dir, **overrides):
    from npsn.gan.trainer import Trainer, preset_config

    images, labels = data
    config = {"iterations": 3, "num_classes": K, "n_dis": 2, "g_ch": 8, "d_ch": 8, "batch_size": 8, "log_every": 1,
              "checkpoint_every": 100, "sample_every": 0, "device": device, **overrides}
    return Trainer(preset_config("cnn", **config), images, out_dir, labels=labels)


def test_a_conditional_cnn_iteration_on_the_device_equals_the_cpu(data, device, tmp_path):
    cpu = conditional_trainer(data, "cpu", str(tmp_path / "cpu"))
    dev = conditional_trainer(data, device, str(tmp_path / "dev"))
    expected = [float(to_numpy(v)) for v in cpu.train_iteration()]  # two D updates and a G update
    got = [float(to_numpy(v)) for v in dev.train_iteration()]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(cpu.D.named_parameters(), dev.D.parameters()):
        np.testing.assert_allclose(to_numpy(q.data), p.data, rtol=1e-4, atol=1e-5, err_msg=name)
    for (name, p), q in zip(cpu.G.named_parameters(), dev.G.parameters()):
        np.testing.assert_allclose(to_numpy(q.data), p.data, rtol=1e-4, atol=1e-5, err_msg=name)


def test_the_conditional_cnn_iteration_fits_the_launch_budget(tmp_path):
    """Full width, batch 64, n_dis 1, as the unconditional budget of test_launch_budget.py (742 ops, 1 sync, 3 H2D).

    Measured: 853 ops, 1 sync, 5 H2D (the counts change a little with the widths: 839 ops at
    g_ch = d_ch = 8). The second iteration is already the steady state (the first makes Adam's moments).
    """
    from test_launch_budget import MAX_H2D, MAX_OPS, MAX_SYNCS

    rng = np.random.default_rng(0)
    data = (rng.integers(0, 256, (128, 3, 32, 32), dtype=np.uint8), rng.integers(0, K, 128).astype(np.int32))
    with backend.use_gpu_module(strict_cupy.cupy):
        trainer = conditional_trainer(data, "gpu", str(tmp_path / "run"), n_dis=1, g_ch=256, d_ch=128,
                                      batch_size=64)
        trainer.train_iteration()
        with strict_cupy.counting() as counts:
            trainer.train_iteration()
    figures = (counts.ops, counts.syncs, counts.h2d)
    assert counts.ops <= MAX_OPS, figures
    assert counts.syncs <= MAX_SYNCS, figures
    # the unconditional three (the real batch's indices, two batches of z) and G's two batches of labels
    # (drawn on the host from the checkpointed label stream, copied like z); the real batch's labels are
    # picked on the device with the same copied indices as its images
    assert counts.h2d <= MAX_H2D + 2, figures


# --------------------------------------------------------------------------------------------- evaluation
def test_classifier_features_and_predict_on_the_device(device):
    from npsn.eval.classifier import Classifier, cross_entropy

    x = np.random.default_rng(9).uniform(-1, 1, (6, 3, 32, 32)).astype(np.float32)
    cpu = Classifier(widths=(4, 8, 8), rng=np.random.default_rng(0))
    dev = Classifier(widths=(4, 8, 8), rng=np.random.default_rng(0)).to(device)
    on_device = to_device(x, device)
    np.testing.assert_allclose(to_numpy(dev.features(on_device, chunk=4)), cpu.features(x, chunk=4),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(to_numpy(dev.predict(on_device)), cpu.predict(x), rtol=1e-4, atol=1e-6)
    # a training step's loss and backward too, on the device's arrays
    y = labels_for(6)
    loss, grad = cross_entropy(cpu(x), y)
    dev_loss, dev_grad = cross_entropy(dev(on_device), to_device(y, device))
    assert backend.device_of(dev_loss) == backend.device_of(dev_grad) == device
    np.testing.assert_allclose(float(dev_loss), float(loss), rtol=1e-5)
    np.testing.assert_allclose(to_numpy(dev.backward(dev_grad)), cpu.backward(grad), rtol=1e-3, atol=1e-6)


def test_class_aware_measures_with_a_device_generator(data, device, tmp_path):
    from npsn.data.pixels import unit_to_pixels
    from npsn.eval.classifier import Classifier
    from npsn.eval.evaluation import cycle_labels, generate
    from npsn.eval.gan_test import class_aware_measures

    images, labels = data
    results = {}
    for where in ("cpu", device):  # as scripts/evaluate.py: real images, labels, z and G on the device
        xp = backend.xp_for(where)
        trainer = conditional_trainer(data, where, str(tmp_path / where))
        classifier = Classifier(widths=(4, 8, 8), rng=np.random.default_rng(0)).to(where)
        z = to_device(np.random.default_rng(3).standard_normal((20, 128)).astype(np.float32), where)
        intended = cycle_labels(20, K, xp)
        fake = unit_to_pixels(generate(trainer.G, z, labels=intended))
        assert backend.device_of(fake) == where and fake.dtype == np.uint8
        results[where] = class_aware_measures(classifier, xp.asarray(images[:20]), fake, fake_labels=intended,
                                              real_labels=xp.asarray(labels[:20]))
    expected, got = results["cpu"], results[device]
    assert sorted(got) == sorted(expected)
    assert got["gan_test_per_class"] == expected["gan_test_per_class"]
    assert got["real_accuracy"] == expected["real_accuracy"]
    np.testing.assert_allclose(got["classifier_fd"], expected["classifier_fd"], rtol=1e-3, atol=1e-6)


def test_frechet_distance_of_device_features(device):
    from npsn.eval.frechet import frechet_distance_of_features

    rng = np.random.default_rng(10)
    a, b = rng.standard_normal((30, 4)), rng.standard_normal((25, 4)) + 0.5
    assert frechet_distance_of_features(to_device(a, device), to_device(b, device)) == \
        frechet_distance_of_features(a, b)


# --------------------------------------------------------------------------------------------- data parallel
def test_multi_node_optimizer_with_one_process_on_the_device(device):
    from npsn.distributed.comm import SingleProcess
    from npsn.distributed.optimizer import MultiNodeOptimizer
    from npsn.nn.module import Parameter
    from npsn.optim import Adam

    def params():
        rng = np.random.default_rng(11)
        return [Parameter(to_device(rng.standard_normal(s).astype(np.float32), device)) for s in ((3, 4), (5,))]

    plain_params, wrapped_params = params(), params()
    plain = Adam(plain_params, lr=0.1, betas=(0.0, 0.9))
    wrapped = MultiNodeOptimizer(Adam(wrapped_params, lr=0.1, betas=(0.0, 0.9)), SingleProcess())
    for step in range(3):
        rng = np.random.default_rng([12, step])
        grads = [rng.standard_normal(p.data.shape).astype(np.float32) for p in plain_params]
        for p, q, g in zip(plain_params, wrapped_params, grads):
            p.grad, q.grad = to_device(g, device), to_device(g.copy(), device)
        plain.step()
        wrapped.step()
        if step == 1:  # one gradient missing: the wrapper packs the others itself
            wrapped_params[1].grad = plain_params[1].grad = None
    for p, q in zip(plain_params, wrapped_params):
        assert backend.device_of(q.data) == device
        np.testing.assert_array_equal(to_numpy(q.data), to_numpy(p.data))


# --------------------------------------------------------------------------------------------- scripts
def test_conditional_scripts_on_the_stand_in(tmp_path, strict_gpu):
    """train_cifar.py --conditional, sample.py --class and evaluate.py --classifier with --device gpu = the stand-in."""
    import json

    from fake_cifar import write_fake_cifar
    from test_scripts import run_main

    archive = write_fake_cifar(str(tmp_path / "cifar"), n_per_batch=20, seed=0)
    run, cpu_run = str(tmp_path / "run"), str(tmp_path / "cpu")
    common = ["--data", archive, "--conditional", "--g-ch", "8", "--d-ch", "8", "--batch-size", "8",
              "--log-every", "1", "--iterations", "2", "--sample-every", "2"]
    with strict_gpu.counting() as counts:
        assert run_main("train_cifar.py", *common, "--out", run, "--device", "gpu") == 0
    assert counts.ops > 0 and counts.syncs > 0  # it really ran on the stand-in
    assert run_main("train_cifar.py", *common, "--out", cpu_run, "--device", "cpu") == 0
    logs = [log_records(r) for r in (run, cpu_run)]
    np.testing.assert_allclose([(r["loss_d"], r["loss_g"]) for r in logs[0]],
                               [(r["loss_d"], r["loss_g"]) for r in logs[1]], rtol=1e-4, atol=1e-5)

    png, npz = str(tmp_path / "cat.png"), str(tmp_path / "cat.npz")
    assert run_main("sample.py", run, "--class", "cat", "--n", "4", "--out", npz, "--device", "gpu") == 0
    assert run_main("sample.py", run, "--class", "cat", "--n", "4", "--out", png, "--device", "gpu") == 0
    saved = np.load(npz)
    assert saved["images"].shape == (4, 3, 32, 32) and os.path.getsize(png) > 0
    np.testing.assert_array_equal(saved["labels"], 3)  # "cat" is CIFAR-10's class 3

    classifier = str(tmp_path / "classifier")
    assert run_main("train_classifier.py", "--data", archive, "--widths", "4,8,8", "--batch-size", "32",
                    "--epochs", "1", "--no-progress", "--out", classifier) == 0
    results = []
    for where, r in (("gpu", run), ("cpu", cpu_run)):
        out = str(tmp_path / f"eval_{where}.json")
        assert run_main("evaluate.py", r, "--data", archive, "--n", "20", "--classifier", classifier,
                        "--device", where, "--out", out) == 0
        with open(out) as f:
            results.append(json.load(f))
    gpu_result, cpu_result = results
    assert len(gpu_result["gan_test_per_class"]) == K
    # the two runs' G differ by float32 rounding only: the same classes, nearly the same distance
    assert gpu_result["gan_test_per_class"] == cpu_result["gan_test_per_class"]
    np.testing.assert_allclose(gpu_result["classifier_fd"], cpu_result["classifier_fd"], rtol=1e-3)
