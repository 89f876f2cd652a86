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
