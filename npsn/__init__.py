"""npsn: Spectral Normalization GANs (Miyato et al., ICLR 2018) in plain NumPy/CuPy."""
