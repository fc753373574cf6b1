"""Image files as they come, decoded once with PIL into uint8 arrays (N, C, H, W) and kept decoded in
a cache outside the folder. Three layouts of `data.root`:

- `root/train/<class>/*` and `root/test/<class>/*` (torchvision's ImageFolder layout, split in two);
- `root/train/<class>/*` and `root/val/<class>/*` (ImageNet's): when there is no test/, val/ is taken
  as the test split (ablate's validation split is held out of train, as for every data set); with
  test/ there, val/ is not read;
- `root/<class>/*` alone: one set, whose test split ablate draws, `data.test_fraction` of every class
  with `data.split_seed` (stratified: the same for every seed).

Classes are the sorted names of the class folders (of train/, or of root; torchvision's convention:
label i is the i-th name; hidden folders, `.name`, are skipped); a test split may hold some of them,
no others. One channel when every image is grey, else three (RGB, alpha dropped). Before decoding
anything, the decoded size is compared with the memory the training device has free. The cache,
`<cache>/image_folder/<key>.npz`, is keyed on the folder's resolved path, the layout, the image size
and every image file's path, size and mtime, so that any change of the files makes a new one (class
folders alone: all images cached as one set, the test split drawn after reading); ablate never
writes into the data folder.
"""

import hashlib
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runner.data.cache import SPLITS, cache_dir, files_key, read_cache, write_cache
from runner.data.datasets import Arrays, DataError, split_off_test

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GREY_MODES = {"L", "1", "I", "I;16", "I;16L", "I;16B", "I;16N", "LA"}
CACHE_VERSION = "image_folder-1"  # part of the cache key: a change of the decoding makes new cache files
CLASS_FOLDERS = "<class>"  # the layout of class folders alone, as Scan.layout names it
LAYOUT = (
    "a folder with images in <root>/train/<class>/* and <root>/test/<class>/* (or <root>/val/<class>/*), "
    f"or in <root>/<class>/* alone ({', '.join(e[1:] for e in EXTENSIONS)})"
)


@dataclass(frozen=True)
class Scan:
    """What a listing of the folder found: its layout ("train/test", "train/val" or CLASS_FOLDERS),
    the classes, and each split's (image file, label) pairs (class folders alone: all in "train")."""

    layout: str
    classes: list[str]
    files: dict[str, list[tuple[Path, int]]]


def image_folder(
    root: str, image_size: int | list[int] | None = None, device=None, test_fraction: float = 0.2, split_seed: int = 0
) -> Arrays:
    """The folder's train and test images as uint8 arrays (N, C, H, W) and int64 labels, at their own
    size (image_size null: they must all agree), s x s (an integer) or h x w ([h, w]); decoded from
    the files, or read from the decoded cache when the files have not changed since. Class folders
    alone: `test_fraction` of every class drawn into test with `split_seed`."""
    size = parse_image_size(image_size)
    folder = Path(root).expanduser().resolve()
    scan = list_images(root, folder)
    key = cache_key(folder, size, scan)
    train, test, source = decoded(root, folder, scan, size, key, device)
    if scan.layout != CLASS_FOLDERS:
        return Arrays(train, test, source=source, classes=scan.classes, key=key)
    train, test = split_off_test(*train, test_fraction, split_seed, f"data.root={root}")
    drawn = hashlib.sha256(f"{key}\ntest_fraction={test_fraction}\nsplit_seed={split_seed}".encode()).hexdigest()
    source += f"; test split drawn: data.test_fraction={test_fraction:g}, data.split_seed={split_seed}"
    return Arrays(train, test, source=source, classes=scan.classes, key=drawn)


def decoded(root: str, folder: Path, scan: Scan, size, key: str, device) -> tuple[tuple, tuple, str]:
    """(train, test, where they came from): read from the decoded cache, else decoded and cached."""
    path = cache_dir() / "image_folder" / f"{key}.npz"
    n = sum(len(f) for f in scan.files.values())
    cached = cached_shape(path)
    if cached is not None:
        check_memory(root, n, cached[1:], device)
        arrays = read_cache(path)
        if arrays is not None:
            return *arrays, f"{folder} (decoded cache {path})"
    shape = probe(root, scan.files, size, key)
    check_memory(root, n, shape, device)
    splits = {split: decode(root, scan.files[split], shape) for split in SPLITS}
    cached_as = write_cache(path, folder, splits)
    return splits["train"], splits["test"], f"{folder} ({cached_as})"


def folder_facts(root: str, image_size=None) -> tuple[int, tuple[int, int, int]]:
    """The number of classes and (C, H, W) of the images as they will be decoded, from a scan of the
    folder: the class folders, and the shape in the decoded cache's header, else the files' headers
    (and data.image_size). Nothing is decoded (runner.data.facts: `${data:...}`)."""
    size = parse_image_size(image_size)
    folder = Path(root).expanduser().resolve()
    scan = list_images(root, folder)
    key = cache_key(folder, size, scan)
    cached = cached_shape(cache_dir() / "image_folder" / f"{key}.npz")
    shape = tuple(int(v) for v in cached[1:]) if cached is not None else probe(root, scan.files, size, key)
    return len(scan.classes), shape


def parse_image_size(image_size) -> tuple[int, int] | None:
    """data.image_size as (height, width), or None for the images' own size."""
    if image_size is None:
        return None
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = [image_size, image_size]
    else:
        try:
            size = list(image_size)
        except TypeError:
            size = []
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise DataError(
            f"data.image_size={image_size!r} is not allowed; allowed: null (the images' own size), "
            "a positive integer, or [height, width]"
        )
    return size[0], size[1]


def _names(names, limit: int = 10) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _images_under(folder: Path) -> list[Path]:
    """The image files anywhere under `folder`, sorted (torchvision walks class folders recursively)."""
    found = []
    for parent, _, names in os.walk(folder, followlinks=True):
        found += [Path(parent) / name for name in names if name.lower().endswith(EXTENSIONS)]
    return sorted(found)


def _subfolders(folder: Path) -> list[str]:
    """The sorted names of the folders in `folder`, hidden ones (.name) left out."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def find_layout(root: str, folder: Path) -> tuple[str, ...]:
    """The split folders of the layout `folder` holds: ("train", "test"), ("train", "val"), or () for
    class folders alone; one line naming data.root and the layouts allowed when it is none of these."""
    if not folder.is_dir():
        raise DataError(f"data.root={root}: {'not a' if folder.exists() else 'no such'} folder; allowed: {LAYOUT}")
    folders = _subfolders(folder)
    if "train" in folders:
        for test in ("test", "val"):
            if test in folders:
                return "train", test
        found = "train/ but neither test/ nor val/"
    elif {"test", "val"} & set(folders):
        found = f"{'/, '.join(sorted({'test', 'val'} & set(folders)))}/ but no train/"
    elif folders:
        return ()
    else:
        found = "no folders"
    raise DataError(f"data.root={root} is not allowed: it holds {found}; allowed: {LAYOUT}")


def _class_files(root: str, folder: Path, where: str) -> dict[str, list[Path]]:
    """Each class folder of `folder` and its image files; none at all is refused."""
    found = {name: _images_under(folder / name) for name in _subfolders(folder)} if folder.is_dir() else {}
    if not any(found.values()):
        raise DataError(f"data.root={root}: no image files in {where}<class>/; allowed: {LAYOUT}")
    return found


def list_images(root: str, folder: Path) -> Scan:
    """The layout, the classes (the sorted class folders of train/, or of the root) and each split's
    (image file, label) pairs."""
    split_folders = find_layout(root, folder)
    if split_folders:
        pairs = zip(SPLITS, split_folders)
        found = {split: _class_files(root, folder / name, f"{folder / name}/") for split, name in pairs}
    else:
        found = {"train": _class_files(root, folder, f"{folder}/"), "test": {}}
    train_name = f"{split_folders[0]}/" if split_folders else "the root's"
    classes = list(found["train"])
    empty = [name for name, paths in found["train"].items() if not paths]
    if empty:
        raise DataError(
            f"data.root={root}: {train_name} classes without image files: {_names(empty)}; allowed: {LAYOUT}"
        )
    extra = [name for name in found["test"] if name not in found["train"]]
    if extra:
        test_name = split_folders[1]
        raise DataError(
            f"data.root={root}: {test_name}/ has classes that train/ lacks: {_names(extra)}; "
            f"allowed: {test_name} classes among train's ({_names(classes)})"
        )
    index = {name: i for i, name in enumerate(classes)}
    files = {split: [(p, index[name]) for name, paths in found[split].items() for p in paths] for split in SPLITS}
    return Scan("/".join(split_folders) or CLASS_FOLDERS, classes, files)


def cache_key(folder: Path, size: tuple[int, int] | None, scan: Scan) -> str:
    """The cache key of the folder's images decoded at `size`: the layout (a folder read as another
    layout makes other arrays), every image file's path, size and mtime."""
    paths = (p for split in SPLITS for p, _ in scan.files[split])
    return files_key(CACHE_VERSION, folder, f"{scan.layout} {size}", paths)


def cached_shape(path: Path) -> tuple[int, ...] | None:
    """The shape of the train images in a cache file, read from its header only; None when there is
    no readable one."""
    try:
        with zipfile.ZipFile(path) as z, z.open("train_images.npy") as f:
            major, _ = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape = header(f)[0]
        return shape if len(shape) == 4 else None
    except Exception:  # noqa: BLE001 missing or corrupt: decoded again and rewritten
        return None


def _is_grey(im) -> bool:
    """Whether a PIL image has one channel of content: a grey mode, or a palette of greys only."""
    if im.mode == "P":  # the palette is read with the pixels: this one image is decoded
        palette = im.getpalette() or []
        return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))
    return im.mode in GREY_MODES


def _unreadable(root: str, path: Path, error: Exception) -> DataError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return DataError(f"data.root={root}: {path} is not a readable image ({reason}); allowed: image files PIL decodes")


def _open(root: str, path: Path):
    from PIL import Image

    try:
        return Image.open(path)
    except Exception as e:  # noqa: BLE001 PIL raises many kinds for a file it cannot read
        raise _unreadable(root, path, e) from None


_probed: dict[str, tuple[int, int, int]] = {}  # cache key: (C, H, W), once per process (the facts, then the run)


def probe(root: str, files: dict, size: tuple[int, int] | None, key: str | None = None) -> tuple[int, int, int]:
    """(C, H, W) of the decoded images, from the files' headers (PIL opens lazily) and `size`;
    remembered under the cache `key` (it names every file's size and mtime), so that the `${data:...}`
    facts and the run that follows open the headers once."""
    if key is not None and key in _probed:
        return _probed[key]
    shape = _probe(root, files, size)
    if key is not None:
        _probed[key] = shape
    return shape


def _probe(root: str, files: dict, size: tuple[int, int] | None) -> tuple[int, int, int]:
    sizes, grey = set(), True
    for path, _ in (pair for split in SPLITS for pair in files[split]):
        with _open(root, path) as im:
            sizes.add((im.height, im.width))
            grey = grey and _is_grey(im)
    if size is None and len(sizes) > 1:
        found = [f"{h}x{w}" for h, w in sorted(sizes)]
        raise DataError(
            f"data.image_size=null is not allowed for {root}: its images have sizes {_names(found, 5)}; "
            "allowed: an integer or [height, width] to resize them to"
        )
    height, width = size or sizes.pop()
    return (1 if grey else 3), height, width


def human_bytes(n: int) -> str:
    """1234567 -> '1.2 MB' (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def _device_type(device) -> str:
    return getattr(device, "type", None) or (str(device).split(":")[0] if device is not None else "cpu")


def free_bytes(device=None) -> int:
    """The memory `device` has free now: a CUDA device's free memory, else the host's available
    memory (MemAvailable of /proc/meminfo, else the free pages); mps and None count as the host."""
    if _device_type(device) == "cuda":
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def fits(n_bytes: int, device=None) -> bool:
    """Whether `n_bytes` fit in what `device` has free now."""
    return n_bytes <= free_bytes(device)


def check_memory(root: str, n: int, shape, device=None, key: str = "data.root") -> None:
    """Refuse, before decoding, `n` images of `shape` (C, H, W) that do not fit in the host's memory
    (where they are decoded) or the training device's; the refusal names `key`=`root` (a data set
    class without a root: data._target_)."""
    n_bytes = n * math.prod(shape)
    for where in ("cpu", "cuda") if _device_type(device) == "cuda" else ("cpu",):
        free = free_bytes(device if where == "cuda" else None)
        if n_bytes > free:
            raise DataError(
                f"{key}={root}: {n:,} images of {'x'.join(map(str, shape))} need {human_bytes(n_bytes)} "
                f"decoded, more than the {human_bytes(free)} free on {where}; allowed: a smaller data.image_size, "
                "or a folder that fits"
            )


def _convert(im, mode: str):
    """A PIL image in mode "L" or "RGB"; 16- and 32-bit integer greys scaled from 0-65535 (PIL's
    own conversion would clip them at 255)."""
    from PIL import Image

    if im.mode.startswith("I"):
        grey = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        im = Image.fromarray(((grey * 255 + 32767) // 65535).astype(np.uint8))
    return im.convert(mode)


def decode(root: str, files: list[tuple[Path, int]], shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The images, decoded into one preallocated uint8 array (N, C, H, W), resized (bilinear) where
    their size differs, and their labels."""
    from PIL import Image

    channels, height, width = shape
    images = np.empty((len(files), channels, height, width), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        with _open(root, path) as im:
            try:
                pixels = _convert(im, "L" if channels == 1 else "RGB")
                if pixels.size != (width, height):
                    pixels = pixels.resize((width, height), Image.Resampling.BILINEAR)
                array = np.asarray(pixels)
            except Exception as e:  # noqa: BLE001 truncated or corrupt pixel data
                raise _unreadable(root, path, e) from None
        images[i] = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return images, np.array([label for _, label in files], dtype=np.int64)
