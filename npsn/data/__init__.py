"""Data: the CIFAR-10 reader, downloader and minibatch stream; pixels <-> [-1, 1]; the 2-D Gaussian mixtures."""
