"""Data: the CIFAR-10 reader, downloader and minibatch stream; the 2-D Gaussian mixtures."""
