"""Shared fixtures: small seeded CNNs of the papers' architectures and the shipped classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import randomize_batch_norms

from xaisdk.models import CifarCNN, MnistCNN


@pytest.fixture(scope="session")
def mnist_cnn() -> MnistCNN:
    """The GANMEX MNIST architecture with seeded random weights, eval mode."""
    torch.manual_seed(0)
    return MnistCNN(in_channels=1, image_size=28, num_classes=10).eval()


@pytest.fixture(scope="session")
def cifar_cnn() -> CifarCNN:
    """A narrow GANMEX CIFAR architecture whose batch norms have non-trivial running statistics."""
    torch.manual_seed(1)
    net = CifarCNN(in_channels=3, image_size=32, num_classes=10, widths=(8, 8, 16, 16)).eval()
    return randomize_batch_norms(net)


@pytest.fixture(scope="session")
def shipped():
    from xaisdk.models import load_shipped_classifier

    return load_shipped_classifier("digits")


@pytest.fixture(scope="session")
def digits():
    from xaisdk.data import load_digits

    return load_digits()


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def ext():
    """The built extension; a missing build fails the test (CI always builds it), it is not skipped."""
    try:
        from xaisdk import _ext
    except ImportError as err:
        pytest.fail(f"xaisdk._ext is not built ({err}); run `python setup.py build_ext --inplace`")
    return _ext
