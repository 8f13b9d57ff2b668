"""cnnlab: run, track and compare CNN experiments on CIFAR-10."""

__version__ = "0.1.0"
