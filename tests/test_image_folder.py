"""Image folders in torchvision's layout: real PNG files written with PIL, decoded by ablate."""

import os
import re
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from fixtures import write_image_folder
from PIL import Image

from runner.data import image_folder as image_folder_module
from runner.data.datasets import DataError
from runner.data.image_folder import fits, free_bytes, image_folder

LAYOUT = re.escape(image_folder_module.LAYOUT)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test's decoded cache in its own folder, outside the data folder."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("ABLATE_CACHE", str(folder))
    return folder


def listing(root: Path) -> list:
    """Every path under `root`, with its size and mtime: what a write there would change."""
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("mode, channels", [("RGB", 3), ("L", 1), ("RGBA", 3)])
def test_decodes_exactly_what_was_written(tmp_path, mode, channels):
    written = write_image_folder(tmp_path / "data", classes=3, per_class_train=4, per_class_test=2, mode=mode)
    arrays = image_folder(str(tmp_path / "data"))
    assert arrays.classes == written["classes"] == ["class_a", "class_b", "class_c"]
    for split, n in (("train", 12), ("test", 6)):
        images, labels = getattr(arrays, split)
        assert images.shape == (n, channels, 32, 32) and images.dtype == np.uint8
        assert labels.dtype == np.int64 and labels.tolist() == [i // (n // 3) for i in range(n)]
        assert np.array_equal(images, written[split][0]) and np.array_equal(labels, written[split][1])


def test_grey_modes_give_one_channel_and_any_colour_gives_rgb(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
    ramp = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(ramp.astype(np.uint16) * 257).save(root / "train" / "a" / "16bit.png")  # mode I;16
    Image.fromarray(ramp).convert("P").save(root / "train" / "a" / "palette.gif")  # a palette of greys
    Image.fromarray(ramp).save(root / "test" / "a" / "grey.bmp")
    (root / "test" / "a" / "notes.txt").write_text("not an image")
    grey = image_folder(str(root))
    assert grey.train[0].shape == (2, 1, 8, 8) and grey.test[0].shape == (1, 1, 8, 8)
    for images in (grey.train[0], grey.test[0]):
        assert (images[:, 0] == ramp).all()
    Image.new("RGBA", (8, 8), (255, 0, 0, 10)).save(root / "test" / "a" / "red.PNG")  # alpha dropped
    colour = image_folder(str(root))
    assert colour.train[0].shape == (2, 3, 8, 8) and colour.test[0].shape == (2, 3, 8, 8)
    assert (colour.train[0] == ramp).all() and (colour.test[0][1] == np.array([255, 0, 0])[:, None, None]).all()


def test_test_labels_use_train_indices_for_a_subset_of_classes(tmp_path):
    written = write_image_folder(tmp_path / "data", classes=3, per_class_train=2, per_class_test=1)
    for path in (tmp_path / "data" / "test" / "class_a").iterdir():
        path.unlink()
    arrays = image_folder(str(tmp_path / "data"))
    assert arrays.test[1].tolist() == [1, 2] and np.array_equal(arrays.test[0], written["test"][0][1:])


def test_mixed_sizes_are_refused_without_image_size(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, classes=2, per_class_train=2, per_class_test=1)
    Image.new("RGB", (40, 30)).save(root / "train" / "class_b" / "wide.png")  # 30 high, 40 wide
    with pytest.raises(DataError) as e:
        image_folder(str(root))
    assert one_line(e) == (
        f"data.image_size=null is not allowed for {root}: its images have sizes 30x40, 32x32; "
        "allowed: an integer or [height, width] to resize them to"
    )


@pytest.mark.parametrize("image_size, height, width", [(16, 16, 16), ([24, 40], 24, 40), ([32, 32], 32, 32)])
def test_image_size_resizes_bilinear(tmp_path, image_size, height, width):
    root = tmp_path / "data"
    written = write_image_folder(root, classes=2, per_class_train=2, per_class_test=1)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "train" / "class_b" / "wide.png")
    arrays = image_folder(str(root), image_size=image_size)
    assert arrays.train[0].shape == (5, 3, height, width) and arrays.test[0].shape == (2, 3, height, width)
    first = Image.open(written["train"][2][0])
    expected = first if first.size == (width, height) else first.resize((width, height), Image.Resampling.BILINEAR)
    assert np.array_equal(arrays.train[0][0], np.asarray(expected).transpose(2, 0, 1))
    assert (arrays.train[0][-1, :, 1:-1, 1:-1] == np.array([200, 10, 10])[:, None, None]).all()


@pytest.mark.parametrize("image_size", [0, [32], [32, 32, 3], "32", True])
def test_bad_image_size_is_refused(tmp_path, image_size):
    write_image_folder(tmp_path / "data", classes=2, per_class_train=1, per_class_test=1)
    with pytest.raises(DataError) as e:
        image_folder(str(tmp_path / "data"), image_size=image_size)
    assert one_line(e) == (
        f"data.image_size={image_size!r} is not allowed; allowed: null (the images' own size), "
        "a positive integer, or [height, width]"
    )


def test_test_classes_not_in_train_are_refused(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, classes=2, per_class_train=1, per_class_test=1)
    (root / "test" / "zebra").mkdir()
    Image.new("RGB", (32, 32)).save(root / "test" / "zebra" / "z.png")
    with pytest.raises(DataError) as e:
        image_folder(str(root))
    assert one_line(e) == (
        f"data.root={root}: test/ has classes that train/ lacks: zebra; "
        "allowed: test classes among train's (class_a, class_b)"
    )


def test_missing_or_empty_folders_are_refused(tmp_path):
    with pytest.raises(DataError) as e:
        image_folder(str(tmp_path / "nowhere"))
    assert re.fullmatch(rf"data.root={tmp_path}/nowhere: no such folder; allowed: {LAYOUT}", one_line(e))
    layouts = (
        "<root>/train/<class>/* and <root>/test/<class>/* (or <root>/val/<class>/*), or in <root>/<class>/* alone "
        "(png, jpg, jpeg, bmp, gif, webp, tif, tiff)"
    )
    assert layouts in str(e.value)
    root = tmp_path / "data"
    write_image_folder(root, classes=2, per_class_train=1, per_class_test=0)
    (root / "test" / "class_a" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as e:
        image_folder(str(root))
    assert re.fullmatch(rf"data.root={root}: no image files in {root}/test/<class>/; allowed: {LAYOUT}", one_line(e))


@pytest.mark.parametrize("damage", ["junk", "truncated"])
def test_an_unreadable_image_is_refused_by_name(tmp_path, damage):
    root = tmp_path / "data"
    written = write_image_folder(root, classes=2, per_class_train=1, per_class_test=1)
    bad = written["train"][2][1]
    bad.write_bytes(b"not a png" if damage == "junk" else bad.read_bytes()[:60])
    with pytest.raises(DataError) as e:
        image_folder(str(root))
    assert one_line(e).startswith(f"data.root={root}: {bad} is not a readable image (")
    assert one_line(e).endswith("); allowed: image files PIL decodes")


def test_cache_lives_outside_the_folder_is_reused_and_follows_the_files(tmp_path, cache):
    root = tmp_path / "data"
    written = write_image_folder(root, classes=2, per_class_train=3, per_class_test=2)
    before = listing(root)
    first = image_folder(str(root))
    assert "decoded cache" not in first.source and str(root) in first.source
    (cached,) = (cache / "image_folder").glob("*.npz")
    assert f"cached in {cached}" in first.source

    second = image_folder(str(root))
    assert second.source == f"{root} (decoded cache {cached})"
    for a, b in ((first.train, second.train), (first.test, second.test)):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert second.classes == first.classes
    assert listing(root) == before  # nothing written into the data folder

    Image.new("RGB", (32, 32), (1, 2, 3)).save(root / "train" / "class_b" / "9999.png")  # added
    added = image_folder(str(root))
    assert "decoded cache" not in added.source and added.train[0].shape[0] == 7
    assert (added.train[0][-1] == np.array([1, 2, 3])[:, None, None]).all() and added.train[1][-1] == 1

    rewritten = written["train"][2][0]  # class_a/0000.png: same name, new pixels
    stat = rewritten.stat()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(rewritten)
    os.utime(rewritten, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse mtime clocks
    changed = image_folder(str(root))
    assert "decoded cache" not in changed.source and (changed.train[0][0] == 9).all()
    assert np.array_equal(changed.train[0][1:], added.train[0][1:])
    assert len(list((cache / "image_folder").glob("*.npz"))) == 3
    assert not list((cache / "image_folder").glob("*.tmp"))


def test_a_corrupt_cache_is_ignored_and_rewritten(tmp_path, cache):
    root = tmp_path / "data"
    written = write_image_folder(root, classes=2, per_class_train=2, per_class_test=1)
    image_folder(str(root))
    (cached,) = (cache / "image_folder").glob("*.npz")
    for garbage in (b"not a zip file", cached.read_bytes()[:-40]):  # junk, truncated
        cached.write_bytes(garbage)
        again = image_folder(str(root))
        assert "decoded cache" not in again.source and np.array_equal(again.train[0], written["train"][0])
        assert "decoded cache" in image_folder(str(root)).source


def test_no_cache_inside_the_data_folder(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_image_folder(root, classes=2, per_class_train=1, per_class_test=1)
    monkeypatch.setenv("ABLATE_CACHE", str(root / "train" / ".cache"))
    before = listing(root)
    arrays = image_folder(str(root))
    assert "not cached: the cache folder" in arrays.source and listing(root) == before


def test_too_big_to_decode_is_refused_before_decoding(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_image_folder(root, classes=2, per_class_train=2, per_class_test=1, size=(8, 8))

    def decode(*args):
        raise AssertionError("decoded although it does not fit")

    monkeypatch.setattr(image_folder_module, "decode", decode)
    start = time.perf_counter()
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as e:
            image_folder(str(root), image_size=10_000_000)  # 1.8 PB
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2 and peak < 10**7
    assert re.fullmatch(
        rf"data.root={root}: 6 images of 3x10000000x10000000 need 1.8 PB decoded, more than the [\d.]+ [kMGT]?B free "
        r"on cpu; allowed: a smaller data.image_size, or a folder that fits",
        one_line(e),
    )


def test_a_cached_folder_is_refused_too_when_memory_is_short(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_image_folder(root, classes=2, per_class_train=2, per_class_test=1)
    image_folder(str(root))
    monkeypatch.setattr(image_folder_module, "free_bytes", lambda device=None: 1000)
    with pytest.raises(DataError) as e:
        image_folder(str(root))
    assert ": 6 images of 3x32x32 need 18.4 kB decoded, more than the 1.0 kB free on cpu;" in one_line(e)


def mem_available() -> int:
    """The host's available memory, as Linux states it in /proc/meminfo (read here, not by the code under test)."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        pytest.skip("no /proc/meminfo to read the available memory from")
    (line,) = (line for line in meminfo.read_text().splitlines() if line.startswith("MemAvailable:"))
    return int(line.split()[1]) * 1024


@pytest.mark.parametrize("device", [None, "cpu", "mps"])
def test_free_bytes_of_the_host_are_its_available_memory_and_fits_compares_with_them(device):
    available = mem_available()
    assert free_bytes(device) == pytest.approx(available, rel=0.2)  # other processes allocate meanwhile
    assert fits(available // 2, device) and not fits(2 * available, device)


def as_class_folders(root: Path) -> Path:
    """`root/train/<class>` moved up to `root/<class>` (test/ dropped): class folders alone."""
    for folder in (root / "train").iterdir():
        folder.rename(root / folder.name)
    for split in ("train", "test"):
        for path in sorted((root / split).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (root / split).rmdir()
    return root


def test_val_is_the_test_split_where_there_is_no_test_folder(tmp_path):
    root = tmp_path / "data"
    written = write_image_folder(root, classes=3, per_class_train=4, per_class_test=2)
    (root / "test").rename(root / "val")
    arrays = image_folder(str(root))
    assert arrays.classes == written["classes"]
    assert np.array_equal(arrays.train[0], written["train"][0]) and np.array_equal(arrays.test[0], written["test"][0])
    assert np.array_equal(arrays.test[1], written["test"][1])


def test_with_test_and_val_the_test_folder_is_the_test_split_and_val_is_not_read(tmp_path):
    root = tmp_path / "data"
    written = write_image_folder(root, classes=2, per_class_train=3, per_class_test=2)
    other = write_image_folder(tmp_path / "other", classes=2, per_class_train=1, per_class_test=1, seed=1)
    (tmp_path / "other" / "test").rename(root / "val")
    arrays = image_folder(str(root))
    assert np.array_equal(arrays.test[0], written["test"][0])
    assert not np.array_equal(arrays.test[0][:2], other["test"][0])


def test_class_folders_alone_give_a_stratified_test_split_drawn_with_split_seed(tmp_path, cache):
    root = tmp_path / "data"
    written = write_image_folder(root, classes=3, per_class_train=10, per_class_test=0)
    as_class_folders(root)
    arrays = image_folder(str(root), test_fraction=0.3, split_seed=5)
    assert arrays.classes == written["classes"]
    assert np.bincount(arrays.test[1]).tolist() == [3, 3, 3] and np.bincount(arrays.train[1]).tolist() == [7, 7, 7]
    every = np.concatenate([arrays.train[0], arrays.test[0]])
    assert sorted(map(bytes, every)) == sorted(map(bytes, written["train"][0]))  # each image once, in one split
    for images, labels in (arrays.train, arrays.test):  # each image keeps its class
        for image, label in zip(images, labels):
            index = next(i for i, w in enumerate(written["train"][0]) if np.array_equal(w, image))
            assert written["train"][1][index] == label
    assert "test split drawn: data.test_fraction=0.3, data.split_seed=5" in arrays.source

    again = image_folder(str(root), test_fraction=0.3, split_seed=5)  # from the cache: the same split
    assert "decoded cache" in again.source and np.array_equal(again.test[0], arrays.test[0]) and again.key == arrays.key
    other = image_folder(str(root), test_fraction=0.3, split_seed=6)  # the same cache, another draw
    assert "decoded cache" in other.source and not np.array_equal(other.test[0], arrays.test[0])
    assert other.key != arrays.key  # the split's summary record (runner.data.summary.summarize) is the draw's own
    assert len(list((cache / "image_folder").glob("*.npz"))) == 1


def test_the_test_split_of_class_folders_is_the_same_for_every_seed(tmp_path):
    from fixtures import compose_cfg

    from runner.data.splits import load

    root = tmp_path / "data"
    write_image_folder(root, classes=2, per_class_train=10, per_class_test=0, size=(8, 8))
    as_class_folders(root)
    cfgs = [compose_cfg("data=image_folder", f"data.root={root}", f"seed={seed}") for seed in (0, 1)]
    infos = [load(cfg.data, "cpu").info for cfg in cfgs]
    assert infos[0]["fingerprints"] == infos[1]["fingerprints"]
    assert infos[0]["sizes"] == {"train": 14, "val": 2, "test": 4}


def test_a_folder_in_none_of_the_layouts_is_refused_naming_the_layouts(tmp_path):
    cases = {
        "train/ but neither test/ nor val/": ["train/a/x.png"],
        "test/, val/ but no train/": ["test/a/x.png", "val/a/x.png"],
        "no folders": ["x.png"],
    }
    for found, files in cases.items():
        root = tmp_path / found.replace("/", "").replace(" ", "_").replace(",", "")
        for name in files:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(root / name)
        with pytest.raises(DataError) as e:
            image_folder(str(root))
        expected = rf"data.root={root} is not allowed: it holds {re.escape(found)}; allowed: {LAYOUT}"
        assert re.fullmatch(expected, one_line(e))


def test_class_folders_without_images_are_refused(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "a" / "notes.txt").write_text("no image")
    with pytest.raises(DataError) as e:
        image_folder(str(root))
    assert re.fullmatch(rf"data.root={root}: no image files in {root}/<class>/; allowed: {LAYOUT}", one_line(e))
    Image.new("RGB", (8, 8)).save(root / "a" / "x.png")
    (root / "b").mkdir()
    with pytest.raises(DataError) as e:
        image_folder(str(root))
    assert re.fullmatch(rf"data.root={root}: the root's classes without image files: b; allowed: {LAYOUT}", one_line(e))


def test_a_test_fraction_that_draws_no_test_image_is_refused(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, classes=2, per_class_train=2, per_class_test=0, size=(8, 8))
    as_class_folders(root)
    with pytest.raises(DataError) as e:
        image_folder(str(root), test_fraction=0.1)
    assert one_line(e) == (
        f"data.test_fraction=0.1 is not allowed for data.root={root}: it draws no test image from its 4 images; "
        "allowed: a larger data.test_fraction, or more images per class"
    )


def test_the_cache_key_names_the_layout(tmp_path, cache):
    """The same files read as another layout are other arrays: the layout is part of the key."""
    root = tmp_path / "data"
    write_image_folder(root, classes=2, per_class_train=2, per_class_test=1, size=(8, 8))
    scan = image_folder_module.list_images(str(root), root)
    keys = {
        layout: image_folder_module.cache_key(root, None, image_folder_module.Scan(layout, scan.classes, scan.files))
        for layout in ("train/test", "train/val", image_folder_module.CLASS_FOLDERS)
    }
    assert len(set(keys.values())) == 3
    first = image_folder(str(root))
    (root / "test").rename(root / "val")  # the same images, now ImageNet's layout: decoded anew
    second = image_folder(str(root))
    assert "decoded cache" not in second.source and second.key != first.key
    assert np.array_equal(second.test[0], first.test[0]) and len(list((cache / "image_folder").glob("*.npz"))) == 2


@pytest.mark.parametrize("layout", ["train/test", "train/val", "classes"])
def test_the_facts_of_a_folder_come_from_a_scan_without_decoding(tmp_path, monkeypatch, layout):
    root = tmp_path / "data"
    write_image_folder(root, classes=3, per_class_train=5, per_class_test=2, size=(12, 10), mode="L")
    if layout == "train/val":
        (root / "test").rename(root / "val")
    elif layout == "classes":
        as_class_folders(root)

    def decode(*args):
        raise AssertionError("decoded for the facts")

    with monkeypatch.context() as patched:
        patched.setattr(image_folder_module, "decode", decode)
        assert image_folder_module.folder_facts(str(root)) == (3, (1, 12, 10))
        assert image_folder_module.folder_facts(str(root), [6, 4]) == (3, (1, 6, 4))
    arrays = image_folder(str(root))  # decoded once; the facts read the cache's header from now on
    assert arrays.train[0].shape[1:] == (1, 12, 10)

    def probe(*args):
        raise AssertionError("the files' headers opened again")

    monkeypatch.setattr(image_folder_module, "_probe", probe)
    image_folder_module._probed.clear()
    assert image_folder_module.folder_facts(str(root)) == (3, (1, 12, 10))
