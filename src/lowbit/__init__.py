"""lowbit: a PyTorch toolkit for binary and low-bit neural network research."""

__version__ = "0.1.0"
