"""Fixtures of the digits metrics' tests: the real digits, and a random 500 of them as a stand-in sample."""

import numpy as np
import pytest
import torch

from difflab.data.digits import load_digits

SAMPLE_COUNT = 500


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def real_subset(digits):
    """A random 500 of the real digits (the first 500 are not random: sklearn's file is grouped by writer)."""
    order = torch.from_numpy(np.random.default_rng(123).permutation(len(digits)))[:SAMPLE_COUNT]
    return digits.images[order], digits.labels[order]
