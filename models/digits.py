"""scikit-learn's 8x8 digits as a small image-classification set (numpy only)."""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def load_digits_split(size=16):
    """(x_train, y_train, x_test, y_test): float32 NCHW images in [0, 1] of
    shape (N, 1, size, size), int64 labels.  ``size`` must be a multiple of 8;
    upsampling repeats pixels (np.kron), so it is exact and framework-free.
    The split is fixed: 25% test, stratified, random_state=0."""
    if size % 8:
        raise ValueError(f"size must be a multiple of 8, got {size}")
    digits = load_digits()
    scale = size // 8
    images = np.kron(digits.images / 16.0, np.ones((1, scale, scale)))
    x = images[:, None].astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y)
    return x_train, y_train, x_test, y_test
