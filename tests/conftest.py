"""Shared test setup: the repository root on sys.path, no network, small helpers."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ["FSDIFF_OFFLINE"] = "1"  # tests never download: MNIST comes from the bundled sample

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


def write_fake_mnist(root, train_count=600, test_count=200):
    """MNIST in torchvision's raw layout (idx files) under root, made of the bundled fallback digits,
    so a test can train and score on 'real' MNIST files without the network."""
    import struct

    import data

    def write(path, magic, array):
        with open(path, "wb") as f:
            f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape))
            f.write(array.contiguous().numpy().tobytes())

    digits = data.load_mnist("/nonexistent-mnist-root", train=True, quiet=True)
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    parts = {"train": slice(0, train_count), "t10k": slice(train_count, train_count + test_count)}
    for prefix, part in parts.items():
        write(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), 0x803, digits.images[part])
        write(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), 0x801, digits.labels[part].to(torch.uint8))
    return root
