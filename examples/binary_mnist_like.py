"""A binary-weight MLP on handwritten digits (scikit-learn's 8x8 digits, offline): train
with 1-bit hidden layers (straight-through estimator), convert them to packed BinaryLinear
modules, and compare with the same MLP in fp32.

    python examples/binary_mnist_like.py --epochs 40
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

import effgen_kernels as ek


def digits_split(seed: int = 0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return (x[order[:1400]], y[order[:1400]]), (x[order[1400:]], y[order[1400:]])


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(),
                         nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(),
                         nn.Linear(256, 10))


def train(model: nn.Module, data, epochs: int, seed: int = 0) -> None:
    x, y = data
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, data) -> float:
    x, y = data
    return (model(x).argmax(1) == y).float().mean().item()


def run(epochs: int = 40, seed: int = 0) -> dict:
    """Returns the test accuracies and the bytes of the hidden layers, fp32 and binary."""
    train_data, test_data = digits_split(seed)
    torch.manual_seed(seed)
    fp32 = mlp()
    binary = copy.deepcopy(fp32)
    # The hidden layers binary; the classifier stays float, as is usual for binary networks.
    ek.prepare(binary, ek.BinaryConfig(), filter_fn=lambda module, name: name != "6")
    train(fp32, train_data, epochs, seed)
    train(binary, train_data, epochs, seed)
    trained_accuracy = accuracy(binary, test_data)
    ek.convert(binary)  # packed 1-bit weights and our kernels from here on
    hidden = ("0", "3")
    return {"fp32_accuracy": accuracy(fp32, test_data), "binary_accuracy": accuracy(binary, test_data),
            "binary_accuracy_before_convert": trained_accuracy,
            "fp32_hidden_bytes": sum(ek.model_bytes(fp32.get_submodule(n)) for n in hidden),
            "binary_hidden_bytes": sum(ek.model_bytes(binary.get_submodule(n)) for n in hidden),
            "binary_model": binary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    r = run(args.epochs, args.seed)
    print(f"test accuracy: fp32 {r['fp32_accuracy']:.3f}, binary hidden layers {r['binary_accuracy']:.3f} "
          f"(chance 0.100)")
    print(f"hidden-layer bytes: fp32 {r['fp32_hidden_bytes']}, binary {r['binary_hidden_bytes']} "
          f"({r['fp32_hidden_bytes'] / r['binary_hidden_bytes']:.1f}x smaller, incl. the CPU lookup tables)")
    print(r["binary_model"])


if __name__ == "__main__":
    main()
