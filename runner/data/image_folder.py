"""Image files in torchvision's ImageFolder layout, `root/train/<class>/*` and `root/test/<class>/*`,
decoded once with PIL into uint8 arrays (N, C, H, W) and kept decoded in a cache outside the folder.

Classes are the sorted folder names of train/ (torchvision's convention: label i is the i-th name);
test/ may hold some of them, no others. One channel when every image is grey, else three (RGB, alpha
dropped). Before decoding anything, the decoded size is compared with the memory the training device
has free. The cache, `<cache>/image_folder/<key>.npz`, is keyed on the folder's resolved path, the
image size and every image file's path, size and mtime, so that any change of the files makes a new
one; ablate never writes into the data folder.
"""

import math
import os
import zipfile
from pathlib import Path

import numpy as np

from runner.data.cache import SPLITS, cache_dir, files_key, read_cache, write_cache
from runner.data.datasets import Arrays, DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GREY_MODES = {"L", "1", "I", "I;16", "I;16L", "I;16B", "I;16N", "LA"}
CACHE_VERSION = "image_folder-1"  # part of the cache key: a change of the decoding makes new cache files
LAYOUT = (
    "a folder with images in <root>/train/<class>/* and <root>/test/<class>/* "
    f"({', '.join(e[1:] for e in EXTENSIONS)})"
)


def image_folder(root: str, image_size: int | list[int] | None = None, device=None) -> Arrays:
    """The folder's train and test images as uint8 arrays (N, C, H, W) and int64 labels, at their own
    size (image_size null: they must all agree), s x s (an integer) or h x w ([h, w]); decoded from
    the files, or read from the decoded cache when the files have not changed since."""
    size = parse_image_size(image_size)
    folder = Path(root).expanduser().resolve()
    classes, files = list_images(root, folder)
    key = cache_key(folder, size, files)
    path = cache_dir() / "image_folder" / f"{key}.npz"
    n = sum(len(f) for f in files.values())
    cached = cached_shape(path)
    if cached is not None:
        check_memory(root, n, cached[1:], device)
        arrays = read_cache(path)
        if arrays is not None:
            return Arrays(*arrays, source=f"{folder} (decoded cache {path})", classes=classes, key=key)
    shape = probe(root, files, size)
    check_memory(root, n, shape, device)
    splits = {split: decode(root, files[split], shape) for split in SPLITS}
    cached_as = write_cache(path, folder, splits)
    return Arrays(splits["train"], splits["test"], source=f"{folder} ({cached_as})", classes=classes, key=key)


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


def list_images(root: str, folder: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """The classes (train/'s sorted folder names) and each split's (image file, label) pairs."""
    if not folder.is_dir():
        raise DataError(f"data.root={root}: {'not a' if folder.exists() else 'no such'} folder; allowed: {LAYOUT}")
    found = {}
    for split in SPLITS:
        split_dir = folder / split
        names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir()) if split_dir.is_dir() else []
        found[split] = {name: _images_under(split_dir / name) for name in names}
        if not any(found[split].values()):
            raise DataError(f"data.root={root}: no image files in {split_dir}/<class>/; allowed: {LAYOUT}")
    classes = list(found["train"])
    empty = [name for name, paths in found["train"].items() if not paths]
    if empty:
        raise DataError(f"data.root={root}: train/ classes without image files: {_names(empty)}; allowed: {LAYOUT}")
    extra = [name for name in found["test"] if name not in found["train"]]
    if extra:
        raise DataError(
            f"data.root={root}: test/ has classes that train/ lacks: {_names(extra)}; "
            f"allowed: test classes among train's ({_names(classes)})"
        )
    index = {name: i for i, name in enumerate(classes)}
    files = {split: [(p, index[name]) for name, paths in found[split].items() for p in paths] for split in SPLITS}
    return classes, files


def cache_key(folder: Path, size: tuple[int, int] | None, files: dict) -> str:
    """The cache key of the folder's images decoded at `size`: every image file's path, size and mtime."""
    return files_key(CACHE_VERSION, folder, size, (p for split in SPLITS for p, _ in files[split]))


def cached_shape(path: Path) -> tuple[int, ...] | None:
    """The shape of the train images in a cache file, read from its header only; None when there is
    no readable one."""
    try:
        with zipfile.ZipFile(path) as z, z.open("train_images.npy") as f:
            major, _ = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape = header(f)[0]
        return shape if len(shape) == 4 else None
    except Exception:  # missing or corrupt: decoded again and rewritten
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
    except Exception as e:
        raise _unreadable(root, path, e) from None


def probe(root: str, files: dict, size: tuple[int, int] | None) -> tuple[int, int, int]:
    """(C, H, W) of the decoded images, from the files' headers (PIL opens lazily) and `size`."""
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


def check_memory(root: str, n: int, shape, device=None) -> None:
    """Refuse, before decoding, `n` images of `shape` (C, H, W) that do not fit in the host's memory
    (where they are decoded) or the training device's."""
    n_bytes = n * math.prod(shape)
    for where in ("cpu", "cuda") if _device_type(device) == "cuda" else ("cpu",):
        free = free_bytes(device if where == "cuda" else None)
        if n_bytes > free:
            raise DataError(
                f"data.root={root}: {n:,} images of {'x'.join(map(str, shape))} need {human_bytes(n_bytes)} "
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
            except Exception as e:  # truncated or corrupt pixel data
                raise _unreadable(root, path, e) from None
        images[i] = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return images, np.array([label for _, label in files], dtype=np.int64)
