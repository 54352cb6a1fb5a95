"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), as tensors."""

from __future__ import annotations

import torch


def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: images ``[N, 1, 8, 8]`` in [0, 1], int64 labels.

    The split is a seeded permutation, identical on every machine.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]
