"""A learned feature space for 8x8 digits: the penultimate layer of a small classifier, as FID uses Inception's.

Raw pixels (:func:`difflab.eval.digits_metrics.digit_features`) score per-pixel statistics: a stroke one pixel
to the side costs as much as a wrong stroke. FID (Heusel et al. 2017, arXiv:1706.08500) measures instead in the
pool3 features of Inception-v3, a network trained to tell classes apart, so distances follow what makes an image
look like its class. This module does the same at the scale of sklearn's digits: a three-convolution network
trained to classify all 1,797 real digits, whose 64 penultimate activations (after ReLU) are the features.

The network is part of the measure, so it is fixed: trained once by :func:`train_feature_net` (seeded,
full passes in a seeded order, one thread, about ten seconds) and shipped as
``difflab/models/digits-features/model.safetensors`` (about 0.2 MB). Loading the shipped weights, not retraining,
is what keeps a number computed today comparable with one computed later on another machine (float rounding
differs with thread counts and CPUs). :func:`feature_net_holdout_accuracy` measures the recipe on a held-out
split, the same check the pixel SVC gets. Units of a Frechet distance here are squared activations, comparable
only with other numbers in this feature space.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

WEIGHTS_PATH = Path(__file__).resolve().parent.parent / "models" / "digits-features" / "model.safetensors"
FEATURE_DIM = 64
FEATURE_SPACE_LEARNED = f"penultimate layer ({FEATURE_DIM}-d, after ReLU) of a small CNN trained on the real digits"
# The recipe. Every number is part of the measure: change one and retrain, and old scores stop being comparable.
EPOCHS = 30  # training accuracy reaches 100% well before; the held-out split plateaus (~98-99%)
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
WEIGHT_DECAY = 1e-4
SEED = 0


class DigitFeatureNet(nn.Module):
    """(N, 1, 8, 8) in [-1, 1] -> 10 logits; ``features`` stops one layer short: (N, 64)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)  # 8x8
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)  # 8x8, then pooled to 4x4
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)  # 4x4, then pooled to 2x2
        self.hidden = nn.Linear(64 * 2 * 2, FEATURE_DIM)
        self.classify = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (N, 64, 4, 4)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)  # (N, 64, 2, 2)
        return F.relu(self.hidden(h.flatten(1)))  # (N, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


@contextmanager
def _one_thread() -> Iterator[None]:
    """One intra-op thread while training, so the same recipe gives the same floats whatever the machine's count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_feature_net(images: torch.Tensor, labels: torch.Tensor, *, seed: int = SEED) -> DigitFeatureNet:
    """Train the feature network on ``images`` (N, 1, 8, 8) in [-1, 1] with ``labels`` (N,): AdamW, cross-entropy."""
    with _one_thread():
        torch.manual_seed(seed)
        net = DigitFeatureNet()
        optimizer = torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        order_generator = torch.Generator().manual_seed(seed)
        for _ in range(EPOCHS):
            order = torch.randperm(len(images), generator=order_generator)
            for start in range(0, len(images), BATCH_SIZE):
                batch = order[start : start + BATCH_SIZE]
                loss = F.cross_entropy(net(images[batch]), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return net.eval()


def feature_net_holdout_accuracy(*, test_fraction: float = 0.25, seed: int = 0) -> float:
    """Accuracy of the recipe trained on a stratified split of the real digits, scored on the held-out rest
    (the split of :func:`difflab.eval.digits_metrics.classifier_holdout_accuracy`)."""
    from sklearn.model_selection import train_test_split

    from difflab.data.digits import load_digits

    digits = load_digits()
    train, test = train_test_split(
        np.arange(len(digits)), test_size=test_fraction, stratify=digits.labels.numpy(), random_state=seed
    )
    net = train_feature_net(digits.images[train], digits.labels[train])
    with torch.no_grad():
        predicted = net(digits.images[test]).argmax(1)
    return float((predicted == digits.labels[test]).float().mean())


def train_shipped_net() -> DigitFeatureNet:
    """The shipped network: the recipe on all 1,797 real digits."""
    from difflab.data.digits import load_digits

    digits = load_digits()
    return train_feature_net(digits.images, digits.labels)


def save_feature_net(net: DigitFeatureNet, holdout_accuracy: float, path: Path = WEIGHTS_PATH) -> Path:
    """Write the weights with the recipe and its held-out accuracy in the file's metadata (atomically)."""
    from difflab.core.checkpoint import atomic_save_safetensors

    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"recipe": _recipe(), "holdout_accuracy": f"{holdout_accuracy:.4f}"}
    atomic_save_safetensors(net.state_dict(), path, metadata=metadata)
    return path


def shipped_holdout_accuracy() -> float:
    """The held-out accuracy recorded beside the shipped weights when they were made (no retraining)."""
    from safetensors import safe_open

    with safe_open(WEIGHTS_PATH, framework="pt") as handle:
        return float((handle.metadata() or {})["holdout_accuracy"])


def _recipe() -> str:
    return (f"DigitFeatureNet, all 1797 sklearn digits, AdamW lr={LEARNING_RATE} wd={WEIGHT_DECAY}, "
            f"batch {BATCH_SIZE}, {EPOCHS} epochs, seed {SEED}, 1 thread")


@functools.lru_cache(maxsize=1)
def feature_net() -> DigitFeatureNet:
    """The shipped network, loaded once. A missing file is an error, never a silent retrain: the weights are
    the measure."""
    from safetensors.torch import load_file

    if not WEIGHTS_PATH.exists():
        raise FileNotFoundError(
            f"digit feature network weights not found at {WEIGHTS_PATH}; recreate them with "
            "`python -m difflab.eval.digit_features` (difflab ships them)"
        )
    net = DigitFeatureNet()
    net.load_state_dict(load_file(WEIGHTS_PATH))
    return net.eval()


def learned_digit_features(images: Any) -> np.ndarray:
    """Images (N, 1, 8, 8) in [-1, 1] -> features (N, 64) float64 from the shipped network.

    Values outside [-1, 1] are clipped first, as :func:`difflab.eval.digits_metrics.digit_features` does.
    """
    images = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        raise ValueError(f"images must have shape (N, 1, 8, 8); got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinity")
    with torch.no_grad():
        features = feature_net().features(images.detach().to("cpu", torch.float32).clamp(-1, 1))
    return features.double().numpy()


if __name__ == "__main__":  # rebuild the shipped weights: python -m difflab.eval.digit_features
    accuracy = feature_net_holdout_accuracy()
    print(f"held-out accuracy of the recipe: {accuracy:.4f}")
    print(f"wrote {save_feature_net(train_shipped_net(), accuracy)}")
