"""Data sources and device batches, on the embedded digits and on small files in the real formats."""

import gzip
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_cfg, run_cli, write_cifar_like, write_idx, write_mnist_like

from runner.data import augment, batches, splits
from runner.data.datasets import DataError, read_cifar_batch, read_idx
from runner.data.splits import load_arrays

FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


def test_mnist_5k_is_a_stratified_seeded_split_of_the_real_digits():
    cfg = compose_cfg("data=mnist_5k").data
    d = splits.load(cfg, torch.device("cpu"))
    assert d.info["sizes"] == {"train": 3600, "val": 400, "test": 1000}
    assert d.in_shape == (1, 28, 28) and d.num_classes == 10
    for split in (d.val, d.test):  # every class keeps its share
        counts = torch.bincount(split.labels, minlength=10)
        assert counts.min() == counts.max()
    assert d.train.images.dtype == torch.uint8 and d.train.images.max() > 200  # real pixels, not zeros
    again = splits.load(cfg, torch.device("cpu"))
    assert again.info["fingerprints"] == d.info["fingerprints"]
    other = splits.load(compose_cfg("data=mnist_5k", "data.split_seed=1").data, torch.device("cpu"))
    assert other.info["fingerprints"]["test"] != d.info["fingerprints"]["test"]


def test_train_size_caps_the_training_split_and_normalization_uses_its_statistics():
    d = splits.load(compose_cfg("data.train_size=100").data, torch.device("cpu"))
    assert len(d.train) == 100 and len(d.val) == 400
    x = d.train.images.float() / 255
    assert torch.allclose(d.mean, x.mean(dim=(0, 2, 3)), atol=1e-5)
    epochs = batches.Batches(d.train, 100, d.mean, d.std)
    ((xb, _),) = list(epochs.epoch())
    assert abs(xb.mean().item()) < 1e-4 and abs(xb.std().item() - 1) < 1e-2


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_loader_reads_idx_files_in_torchvision_layout(tmp_path, gz):
    written = write_mnist_like(tmp_path / "MNIST" / "raw", n_train=50, n_test=20, gz=gz)
    cfg = compose_cfg("data=mnist", f"data.root={tmp_path}", "data.verify=false", "data.download=false").data
    arrays = load_arrays(cfg, torch.device("cpu"))
    assert arrays.train[0].shape == (50, 1, 28, 28) and arrays.test[0].shape == (20, 1, 28, 28)
    assert np.array_equal(arrays.train[0][:, 0], written["train-images-idx3-ubyte"])
    assert np.array_equal(arrays.test[1], written["t10k-labels-idx1-ubyte"])
    assert arrays.source.startswith(f"{tmp_path / 'MNIST' / 'raw'} (decoded, cached in ")


def test_idx_files_are_decoded_once_into_a_cache_outside_the_data_folder(tmp_path, monkeypatch):
    folder, cache = tmp_path / "MNIST" / "raw", tmp_path / "cache"
    monkeypatch.setenv("ABLATE_CACHE", str(cache))
    written = write_mnist_like(folder, n_train=50, n_test=20)
    listing = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    cfg = compose_cfg("data=mnist", f"data.root={tmp_path}", "data.verify=false", "data.download=false").data
    first = load_arrays(cfg, torch.device("cpu"))
    (cached,) = (cache / "mnist").glob("*.npz")
    assert first.source == f"{folder} (decoded, cached in {cached})"
    second = load_arrays(cfg, torch.device("cpu"))
    assert second.source == f"{folder} (decoded cache {cached})"
    for split in ("train", "test"):
        for part in (0, 1):
            assert np.array_equal(second.__dict__[split][part], first.__dict__[split][part])
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == listing  # the data folder untouched

    write_mnist_like(folder, n_train=51, n_test=20, seed=1)  # a changed file is decoded again
    changed = load_arrays(cfg, torch.device("cpu"))
    assert "decoded, cached in" in changed.source and len(changed.train[1]) == 51
    assert not np.array_equal(changed.test[0][:, 0], written["t10k-images-idx3-ubyte"])

    for path in (cache / "mnist").glob("*.npz"):
        path.write_bytes(b"not a cache file")  # an unreadable cache file is decoded again and rewritten
    again = load_arrays(cfg, torch.device("cpu"))
    assert "decoded, cached in" in again.source and np.array_equal(again.train[0], changed.train[0])
    assert "decoded cache" in load_arrays(cfg, torch.device("cpu")).source


def test_statistics_and_fingerprints_of_cached_arrays_are_read_back_for_the_same_split(tmp_path, monkeypatch):
    """runner.data.summary.summarize: the second load of the same cached arrays, split the same way, reads the
    record the first wrote, with the same values to the last bit; another split, a changed file or
    a broken record are computed again."""
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    write_mnist_like(tmp_path / "MNIST" / "raw", n_train=60, n_test=20)
    base = ["data=mnist", f"data.root={tmp_path}", "data.verify=false", "data.download=false"]
    first = splits.load(compose_cfg(*base).data, torch.device("cpu"))
    (record,) = (tmp_path / "cache" / "summaries").glob("*.json")
    x = first.train.images.double() / 255
    assert torch.equal(first.mean, x.mean(dim=(0, 2, 3)).float())  # from the histogram, in float64
    again = splits.load(compose_cfg(*base).data, torch.device("cpu"))
    assert torch.equal(again.mean, first.mean) and torch.equal(again.std, first.std)
    assert again.info == {**first.info, "source": again.info["source"]}  # the arrays' source: the decoded cache now
    assert [p.stat().st_mtime_ns for p in record.parent.iterdir()] == [record.stat().st_mtime_ns]  # read, not written

    record.write_text('{"mean": [0.5], "std": [0.5], "fingerprints": {"train": "x"}}')  # not of these splits
    assert splits.load(compose_cfg(*base).data, torch.device("cpu")).info == again.info
    other = splits.load(compose_cfg(*base, "data.split_seed=1").data, torch.device("cpu"))
    assert other.info["fingerprints"]["val"] != first.info["fingerprints"]["val"]
    assert len(list(record.parent.iterdir())) == 2
    write_mnist_like(tmp_path / "MNIST" / "raw", n_train=60, n_test=20, seed=1)
    changed = splits.load(compose_cfg(*base).data, torch.device("cpu"))
    assert changed.info["fingerprints"]["test"] != first.info["fingerprints"]["test"]
    assert changed.info["mean"] != first.info["mean"]


def test_verify_rejects_files_that_are_not_the_known_data_set(tmp_path):
    write_mnist_like(tmp_path / "FashionMNIST" / "raw")
    cfg = compose_cfg("data=fashion_mnist", f"data.root={tmp_path}", "data.download=false").data
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: checksum does not match.*data.verify=false"):
        load_arrays(cfg, torch.device("cpu"))


def test_truncated_idx_file_is_named_in_the_error(tmp_path):
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 28, 28), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=rf"{path}: .*truncated or corrupt"):
        read_idx(path)
    path.write_bytes(b"not an idx file")
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(path)


def _files(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    "dataset, folder, write",
    [
        ("mnist", "MNIST/raw", lambda f: write_mnist_like(f, gz=False)),
        ("fashion_mnist", "FashionMNIST/raw", lambda f: write_mnist_like(f, gz=False)),
        ("cifar10", "cifar-10-batches-py", lambda f: write_cifar_like(f, per_batch=4)),
    ],
)
def test_verify_checks_the_decompressed_files_of_every_data_set(tmp_path, dataset, folder, write):
    """Decompressed files (as torchvision leaves them) have known checksums too: a file that is not
    the real one is named, with the fix, and left as it was."""
    write(tmp_path / folder)
    before = _files(tmp_path / folder)
    cfg = compose_cfg(f"data={dataset}", f"data.root={tmp_path}", "data.download=false").data
    with pytest.raises(DataError) as err:
        load_arrays(cfg, torch.device("cpu"))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / folder}/") and "\n" not in message
    assert f"checksum does not match the known {dataset} file (truncated or corrupt?)" in message
    assert "replace it with a fresh copy, or set data.verify=false for a file you made yourself" in message
    assert _files(tmp_path / folder) == before


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_data_file_stops_the_run_with_one_line_and_is_left_as_it_is(tmp_path, damage):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_like(raw)
    path = raw / "train-images-idx3-ubyte.gz"  # the first file read
    if damage == "truncated":  # a download cut short
        path.write_bytes(path.read_bytes()[:-200])
        expected = rf"error: {path}: not a readable gzip file \(.+\); replace it with a fresh copy"
    else:  # not the known MNIST bytes (the files hold random digits)
        expected = rf"error: {path}: checksum does not match the known mnist file \(truncated or corrupt\?\); "
        expected += "replace it with a fresh copy, or set data.verify=false for a file you made yourself"
    before = _files(raw)
    result = run_cli("data=mnist", f"data.root={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr
    assert re.fullmatch(expected, result.stderr.strip()), result.stderr
    assert _files(raw) == before  # bytes and modification times: nothing rewritten, nothing deleted


def test_no_download_into_a_folder_that_holds_some_of_the_files(tmp_path):
    """torchvision's download replaces the files it finds wrong; ablate never lets it at a user's files."""
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_like(raw)
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    before = _files(raw)
    cfg = compose_cfg("data=mnist", f"data.root={tmp_path}", "data.download=true").data
    with pytest.raises(DataError) as err:
        load_arrays(cfg, torch.device("cpu"))
    message = str(err.value)
    assert f"{raw} (incomplete, no t10k-labels-idx1-ubyte)" in message
    assert f"download (not into {raw}: it holds some of the files, which a download would replace)" in message
    assert _files(raw) == before


@pytest.mark.skipif(not FASHION_SYSTEM.exists(), reason="apt-get install dataset-fashion-mnist (CI installs it)")
def test_a_real_file_with_one_byte_changed_or_cut_short_is_named(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in FASHION_SYSTEM.iterdir():
        (raw / path.name).write_bytes(path.read_bytes())
    labels = gzip.decompress((raw / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    flipped = bytearray(labels)
    flipped[500] = (flipped[500] + 1) % 10  # one label changed: still a valid IDX file
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(flipped))
    cfg = compose_cfg("data=fashion_mnist", f"data.root={tmp_path}", "data.download=false").data
    with pytest.raises(DataError, match=rf"^{raw / 't10k-labels-idx1-ubyte'}: checksum does not match"):
        load_arrays(cfg, torch.device("cpu"))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(labels)  # the real bytes pass
    images = raw / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[: 1 << 20])
    with pytest.raises(DataError, match=rf"^{images}: not a readable gzip file .*replace it with a fresh copy"):
        load_arrays(cfg, torch.device("cpu"))


def test_cifar10_loader_reads_python_batches(tmp_path):
    written = write_cifar_like(tmp_path / "cifar-10-batches-py", per_batch=8)
    cfg = compose_cfg("data=cifar10", f"data.root={tmp_path}", "data.verify=false", "data.download=false").data
    arrays = load_arrays(cfg, torch.device("cpu"))
    assert arrays.train[0].shape == (40, 3, 32, 32) and arrays.test[0].shape == (8, 3, 32, 32)
    data_1, labels_1 = written["data_batch_1"]
    # a row is 1024 red, then 1024 green, then 1024 blue values, each 32x32 in row-major order
    assert arrays.train[0][0, 1, 2, 3] == data_1[0, 1024 + 2 * 32 + 3]
    assert arrays.train[1][:8].tolist() == labels_1
    d = splits.load(cfg, torch.device("cpu"))
    assert d.in_shape == (3, 32, 32) and d.mean.shape == (3,)


def test_cifar_batch_that_carries_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}))
    with pytest.raises(DataError, match="not a readable CIFAR-10 batch.*not allowed"):
        read_cifar_batch(path)
    assert not marker.exists()


def test_missing_data_says_what_was_tried_and_what_to_do(tmp_path):
    cfg = compose_cfg("data=cifar10", f"data.root={tmp_path}", "data.download=false").data
    with pytest.raises(DataError) as err:
        load_arrays(cfg, torch.device("cpu"))
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "cifar-10-batches-py") in message and "missing" in message
    assert "data.download=false" in message and "cifar-10-python.tar.gz" in message


@pytest.mark.skipif(not FASHION_SYSTEM.exists(), reason="apt-get install dataset-fashion-mnist (CI installs it)")
def test_fashion_mnist_comes_from_the_debian_copy_and_passes_its_checksums(tmp_path):
    cfg = compose_cfg("data=fashion_mnist", f"data.root={tmp_path}", "data.download=false").data
    arrays = load_arrays(cfg, torch.device("cpu"))
    assert arrays.source.startswith(f"{FASHION_SYSTEM} (")
    assert arrays.train[0].shape == (60000, 1, 28, 28) and arrays.test[0].shape == (10000, 1, 28, 28)
    assert np.bincount(arrays.test[1]).tolist() == [1000] * 10


def _split(n: int) -> splits.Split:
    return splits.Split(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone(), torch.arange(n))


def test_an_epoch_is_a_seeded_permutation_in_full_batches():
    epochs = batches.Batches(_split(100), 32, None, None, shuffle=True, drop_last=True, seed=3)
    assert len(epochs) == 3
    order = torch.cat([y for _, y in epochs.epoch(0)])
    assert len(order) == 96 and len(set(order.tolist())) == 96
    assert torch.equal(order, torch.cat([y for _, y in epochs.epoch(0)]))  # the same for (seed, epoch)
    assert not torch.equal(order, torch.cat([y for _, y in epochs.epoch(1)]))
    other_seed = batches.Batches(_split(100), 32, None, None, shuffle=True, drop_last=True, seed=4)
    assert not torch.equal(order, torch.cat([y for _, y in other_seed.epoch(0)]))
    for x, y in epochs.epoch(0):  # images travel with their labels
        assert torch.allclose(x[:, 0, 0, 0] * 255, y.float())


def test_augment_flip_mirrors_about_half_the_images_and_moves_none():
    n = 400
    images = torch.randint(0, 256, (n, 1, 5, 5), dtype=torch.uint8)
    split = splits.Split(images, torch.arange(n))
    epoch = batches.Batches(split, 100, None, None, shuffle=True, augment="flip", drop_last=True, seed=1).epoch(0)
    mirrored = 0
    for x, y in epoch:
        x, original = (x * 255).round().to(torch.uint8), images[y]
        same = (x == original).flatten(1).all(1)
        flipped = (x == original.flip(-1)).flatten(1).all(1)
        assert (same | flipped).all()  # each image as it is or its mirror image: no shift
        mirrored += int((flipped & ~same).sum())
    assert 0.4 * n < mirrored < 0.6 * n


@pytest.mark.parametrize("augment", [False, "flip", True])
def test_batches_hold_the_same_normalized_images_in_either_memory_format(augment):
    images = torch.randint(0, 256, (50, 3, 6, 5), dtype=torch.uint8)
    split, mean, std = (
        splits.Split(images, torch.arange(50)),
        torch.tensor([0.1, 0.5, 0.9]),
        torch.tensor([0.2, 0.3, 0.4]),
    )
    kwargs = {"shuffle": True, "augment": augment, "seed": 2}
    nchw = batches.Batches(split, 16, mean, std, **kwargs)
    nhwc = batches.Batches(split, 16, mean, std, memory_format=torch.channels_last, **kwargs)
    for (a, ya), (b, yb) in zip(nchw.epoch(1), nhwc.epoch(1), strict=True):
        assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a, b) and torch.equal(ya, yb)
        if not augment:  # (x / 255 - mean) / std per channel, of the images of these labels
            expected = (images[ya].float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
            assert torch.allclose(a, expected, atol=1e-5)
    converted = split.images  # in place, once: a sweep's next jobs share the split and its copy
    assert converted.is_contiguous(memory_format=torch.channels_last) and torch.equal(converted, images)
    batches.Batches(split, 16, mean, std, memory_format=torch.channels_last, **kwargs)
    assert split.images.data_ptr() == converted.data_ptr()


def test_crop_flip_shifts_and_mirrors_each_image_of_the_batch():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    centre = torch.tensor([2, 2])
    same = augment.crop_flip(x, centre, centre, torch.tensor([False, False]), pad=2)
    assert torch.equal(same, x)
    mirrored = augment.crop_flip(x, centre, centre, torch.tensor([True, False]), pad=2)
    assert torch.equal(mirrored[0], x[0].flip(-1)) and torch.equal(mirrored[1], x[1])
    shifted = augment.crop_flip(x, torch.tensor([0, 4]), torch.tensor([2, 2]), torch.tensor([False, False]), pad=2)
    assert torch.equal(shifted[0, 0, 2:], x[0, 0, :2]) and (shifted[0, 0, :2] == 0).all()  # down by 2, zero-padded
    assert torch.equal(shifted[1, 0, :2], x[1, 0, 2:]) and (shifted[1, 0, 2:] == 0).all()  # up by 2
