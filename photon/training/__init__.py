"""The training loop behind `photon train`."""
