"""Evaluation datasets read from local folders only, a dataset registry and a deterministic loader.

Nothing here ever downloads. ``imagenet_val`` reads a flat folder of ImageNet validation images
named ``ILSVRC2012_val_<n>_<synset>.JPEG`` and takes each label from the synset in the file name,
as seed 000 (WEBCRAFT, ``WEBCRAFT_ViT_imagenet.ipynb``) does; ``resize=None`` reproduces that
seed's preprocessing (``Resize((224, 224))``, no crop, ImageNet mean/std). ``cifar10`` and
``mnist`` read torchvision's on-disk layouts through ``torchvision.datasets`` with
``download=False`` (their ``download`` method is replaced by one that raises). A missing or
malformed folder raises :class:`~qfault._errors.QFaultConfigError` naming ``dataset.root``.

Differences from seed 000, on purpose: files are sorted by name (the seed uses ``os.listdir``
order), and a class map is a synset -> index map read from a file, so two synsets never share an
index (the seed maps through class *names*, and names that occur twice in its table collide).

torchvision is imported on first use, so importing :mod:`qfault.data` stays light.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .._errors import QFaultConfigError, check_bool, check_range
from .._registry import Registry

__all__ = [
    "DATASETS",
    "ImageNetValFolder",
    "build_dataset",
    "cifar10",
    "digits_dataset",
    "imagenet_val",
    "list_datasets",
    "make_loader",
    "mnist",
    "register_dataset",
]

DATASETS: Registry = Registry("dataset")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

#: ``ILSVRC2012_val_00000001_n01751748.JPEG`` -> synset ``n01751748``.
_IMAGENET_FILE = re.compile(r"^ILSVRC2012_val_(\d+)_(n\d{8})\.(?:jpeg|jpg)$", re.IGNORECASE)
_IMAGE_SUFFIXES = (".jpeg", ".jpg")
_IMAGENET_EXPECTED = "a folder of ILSVRC2012_val_<n>_<synset>.JPEG files"
#: Names of the synset list bundled with timm (ImageNet-1k class order, the standard indices).
_BUILTIN_CLASS_MAPS = ("imagenet-1k", "imagenet1k")
_INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
_NO_DOWNLOAD = "qfault never downloads; put the files there yourself"


def register_dataset(name: str, *, aliases: tuple[str, ...] = ()):
    """Decorator registering a dataset factory under ``name`` (and ``aliases``) in :data:`DATASETS`."""

    def wrap(fn: Callable[..., Dataset]) -> Callable[..., Dataset]:
        DATASETS.register(name, fn, aliases=aliases)
        return fn

    return wrap


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------
def _check_root(root: Any) -> Path:
    if isinstance(root, bool) or not isinstance(root, (str, os.PathLike)) or str(root) == "":
        raise QFaultConfigError("dataset.root", root, "a folder path (str or os.PathLike)")
    return Path(root).expanduser()


def _missing_root(root: Path, expected: str, hint: str) -> QFaultConfigError:
    return QFaultConfigError("dataset.root", str(root), expected, hint=hint)


def _check_limit(field: str, limit: Any) -> None:
    if limit is not None:
        check_range(field, limit, 0, 2**62, integer=True)


def _check_stats(field: str, value: Any, channels: int) -> tuple[float, ...]:
    allowed = f"a sequence of {channels} number(s)" + (" > 0" if field.endswith("std") else "")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != channels:
        raise QFaultConfigError(field, value, allowed)
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise QFaultConfigError(field, value, allowed)
        if field.endswith("std") and v <= 0:
            raise QFaultConfigError(field, value, allowed)
        out.append(float(v))
    return tuple(out)


def _interpolation(value: Any):
    from torchvision.transforms import InterpolationMode

    if isinstance(value, InterpolationMode):
        return value
    if not isinstance(value, str) or value.lower() not in _INTERPOLATIONS:
        raise QFaultConfigError(
            "dataset.interpolation", value, "one of " + ", ".join(repr(c) for c in _INTERPOLATIONS)
        )
    return InterpolationMode(value.lower())


# --------------------------------------------------------------------------------------------
# ImageNet validation folder
# --------------------------------------------------------------------------------------------
class ImageNetValFolder(Dataset):
    """A flat folder of ImageNet validation images; labels come from the synsets in the file names.

    Build it with :func:`imagenet_val`, which validates the arguments.

    Attributes:
        root: the folder.
        files: image paths, sorted by file name.
        targets: the label of each file.
        classes: synsets in class-index order (``classes[i]`` is the synset of index ``i`` where
            the class map has no gaps).
        class_to_idx: synset -> class index.
        transform: applied to each RGB PIL image.
    """

    def __init__(self, root: Path, files: list[Path], targets: list[int], class_to_idx: dict[str, int],
                 transform: Callable | None):
        self.root = root
        self.files = files
        self.targets = targets
        self.class_to_idx = class_to_idx
        self.classes = sorted(class_to_idx, key=lambda s: (class_to_idx[s], s))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image, UnidentifiedImageError

        path = self.files[index]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise QFaultConfigError("dataset.root", str(self.root), "readable JPEG images",
                                    hint=f"cannot read {path.name}: {exc}") from exc
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, images={len(self)}, "
                f"classes={len(self.class_to_idx)})")


def _scan_imagenet(root: Path) -> list[tuple[str, str]]:
    """``[(file name, synset)]`` sorted by file name; raises on a missing or malformed folder."""
    if not root.exists():
        raise _missing_root(root, _IMAGENET_EXPECTED, f"folder not found; {_NO_DOWNLOAD}")
    if not root.is_dir():
        raise _missing_root(root, _IMAGENET_EXPECTED, "not a folder")
    found, unnamed, subdirs = [], [], 0
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.is_dir():
                subdirs += 1
                continue
            match = _IMAGENET_FILE.match(entry.name)
            if match:
                found.append((entry.name, match.group(2)))
            elif entry.name.lower().endswith(_IMAGE_SUFFIXES):
                unnamed.append(entry.name)
    if unnamed:
        raise _missing_root(
            root, _IMAGENET_EXPECTED,
            f"{len(unnamed)} image file(s) without a synset in the name, e.g. {sorted(unnamed)[0]!r}; "
            "rename them to ILSVRC2012_val_<n>_<synset>.JPEG",
        )
    if not found:
        hint = "no ILSVRC2012_val_<n>_<synset>.JPEG files found"
        if subdirs:
            hint += f" (it has {subdirs} subfolder(s): the class-subfolder layout is not read; " \
                    "point dataset.root at the folder holding the images)"
        raise _missing_root(root, _IMAGENET_EXPECTED, hint)
    found.sort()
    return found


def _read_class_map(class_map: Any) -> dict[str, int]:
    """synset -> index from a mapping, a built-in name, a JSON file or a text file."""
    field = "dataset.class_map"
    allowed = ("a JSON file ({synset: index}, [synsets] or {\"index\": [synset, name]}), a text file "
               "with one synset per line in class order, a {synset: index} mapping, or 'imagenet-1k'")
    if isinstance(class_map, Mapping):
        mapping = dict(class_map)
    elif isinstance(class_map, (str, os.PathLike)) and not isinstance(class_map, bool):
        path = Path(class_map).expanduser()
        if isinstance(class_map, str) and class_map.lower() in _BUILTIN_CLASS_MAPS and not path.exists():
            from timm.data import ImageNetInfo  # bundled synset list, read from the installed package

            return {s: i for i, s in enumerate(ImageNetInfo("imagenet-1k").label_names())}
        if not path.is_file():
            raise QFaultConfigError(field, str(class_map), allowed, hint="file not found")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise QFaultConfigError(field, str(class_map), allowed, hint=f"unreadable: {exc}") from exc
        stripped = text.lstrip()
        if path.suffix.lower() == ".json" or stripped.startswith(("{", "[")):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise QFaultConfigError(field, str(class_map), allowed, hint=f"invalid JSON: {exc}") from exc
            if isinstance(data, list):
                mapping = _ordered_synsets(data, class_map, allowed)
            elif isinstance(data, dict) and data and all(isinstance(v, list) and v for v in data.values()):
                # Keras' imagenet_class_index.json: {"0": ["n01440764", "tench"], ...}
                try:
                    mapping = {v[0]: int(k) for k, v in data.items()}
                except (TypeError, ValueError) as exc:
                    raise QFaultConfigError(field, str(class_map), allowed,
                                            hint="an index -> [synset, name] map needs integer keys") from exc
            elif isinstance(data, dict):
                mapping = data
            else:
                raise QFaultConfigError(field, str(class_map), allowed, hint="JSON is neither a dict nor a list")
        else:
            # one synset per line; anything after the first blank is a description (LOC_synset_mapping.txt)
            lines = [line.split()[0] for line in text.splitlines()
                     if line.strip() and not line.lstrip().startswith("#")]
            mapping = _ordered_synsets(lines, class_map, allowed)
    else:
        raise QFaultConfigError(field, class_map, allowed)
    if not mapping:
        raise QFaultConfigError(field, _shown(class_map), allowed, hint="it is empty")
    for synset, index in mapping.items():
        if not isinstance(synset, str) or isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise QFaultConfigError(field, _shown(class_map), allowed,
                                    hint=f"entry {synset!r}: {index!r} is not synset: index >= 0")
    return mapping


def _ordered_synsets(items: list, source: Any, allowed: str) -> dict[str, int]:
    mapping: dict[str, int] = {}
    for item in items:
        if not isinstance(item, str) or not item:
            raise QFaultConfigError("dataset.class_map", _shown(source), allowed, hint=f"{item!r} is not a synset")
        if item in mapping:
            raise QFaultConfigError("dataset.class_map", _shown(source), allowed,
                                    hint=f"synset {item!r} listed twice")
        mapping[item] = len(mapping)
    return mapping


def _shown(class_map: Any) -> Any:
    """How a class map is shown in an error: its path, or ``"<mapping>"``."""
    if isinstance(class_map, os.PathLike):
        return str(class_map)
    return class_map if isinstance(class_map, str) else "<mapping>"


def _imagenet_transform(image_size: int, resize: int | None, mean, std, interpolation):
    from torchvision import transforms as T

    if resize is None:  # seed 000: squash to image_size x image_size, no crop
        geometry = [T.Resize((image_size, image_size), interpolation=interpolation)]
    else:
        geometry = [T.Resize(resize, interpolation=interpolation), T.CenterCrop(image_size)]
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))])


def imagenet_val(root: str | os.PathLike, class_map: str | os.PathLike | Mapping[str, int] | None = None, *,
                 image_size: int = 224, resize: int | None = 256,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 limit: int | None = None, interpolation: str = "bilinear") -> ImageNetValFolder:
    """ImageNet validation images from a flat local folder, labelled from their file names.

    Reads every ``ILSVRC2012_val_<n>_<synset>.JPEG`` in ``root`` (other files, except images
    without a synset in their name, are ignored), sorted by file name. Each image is opened as
    RGB, resized, cropped, converted with ``ToTensor`` and normalized.

    Args:
        root: the folder holding the images.
        class_map: synset -> class index. A path to a JSON file (``{synset: index}``, a list of
            synsets in class order, or Keras' ``{"index": [synset, name]}``), or to a text file
            with one synset per line in class order (text after the synset is ignored, so
            ``LOC_synset_mapping.txt`` works); a ``{synset: index}`` mapping; or
            ``"imagenet-1k"`` for the standard ImageNet-1k order (timm's bundled list). ``None``:
            the sorted unique synsets found in ``root`` (warns when there are fewer than 1000,
            since the indices then differ from a 1000-class model's).
        image_size: side of the square output.
        resize: shorter side before ``CenterCrop(image_size)``; ``None`` resizes straight to
            ``(image_size, image_size)`` without a crop, as seed 000 does.
        mean: per-channel normalization mean.
        std: per-channel normalization standard deviation.
        limit: keep only the first ``limit`` files (the classes still come from all files).
        interpolation: resize filter: ``"bilinear"``, ``"bicubic"``, ``"nearest"``, ...

    Returns:
        A map-style dataset of ``(float tensor [3, image_size, image_size], int label)``.

    Raises:
        QFaultConfigError: ``dataset.root`` when the folder is missing, holds no such files or
            holds images without a synset in the name; ``dataset.class_map`` when the map cannot
            be read or lacks a synset found in ``root``; the field of any other invalid argument.

    Example:
        >>> ds = imagenet_val("~/data/imagenet/val", class_map="imagenet-1k")  # doctest: +SKIP
        >>> image, label = ds[0]  # doctest: +SKIP
    """
    root = _check_root(root)
    check_range("dataset.image_size", image_size, 1, 1 << 16, integer=True)
    if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int)
                               or not image_size <= resize <= 1 << 16):
        raise QFaultConfigError("dataset.resize", resize, f"None or an integer in [{image_size}, {1 << 16}]",
                                hint="None resizes straight to image_size without a crop")
    mean = _check_stats("dataset.mean", mean, 3)
    std = _check_stats("dataset.std", std, 3)
    _check_limit("dataset.limit", limit)
    mode = _interpolation(interpolation)

    found = _scan_imagenet(root)
    synsets = sorted({synset for _, synset in found})
    if class_map is None:
        class_to_idx = {s: i for i, s in enumerate(synsets)}
        if len(synsets) < 1000:
            warnings.warn(
                f"imagenet_val: {len(synsets)} synsets found in {root} and no class_map: labels index "
                "these sorted synsets, not the 1000 ImageNet-1k classes; pass class_map='imagenet-1k' "
                "(or a file) to evaluate a 1000-class model",
                UserWarning, stacklevel=2,
            )
    else:
        class_to_idx = _read_class_map(class_map)
        missing = [s for s in synsets if s not in class_to_idx]
        if missing:
            raise QFaultConfigError(
                "dataset.class_map", _shown(class_map), "a map covering every synset found in dataset.root",
                hint=f"{len(missing)} synset(s) missing, e.g. {missing[0]!r}",
            )
    if limit is not None:
        found = found[:limit]
    files = [root / name for name, _ in found]
    targets = [class_to_idx[synset] for _, synset in found]
    transform = _imagenet_transform(image_size, resize, mean, std, mode)
    return ImageNetValFolder(root, files, targets, class_to_idx, transform)


# --------------------------------------------------------------------------------------------
# torchvision on-disk formats (CIFAR-10, MNIST), never downloading
# --------------------------------------------------------------------------------------------
def _refuse_download(self) -> None:
    raise QFaultConfigError("dataset.root", str(self.root), "local files", hint=_NO_DOWNLOAD)


def _make_local_cifar10() -> type:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    class _LocalCIFAR10(CIFAR10):
        """torchvision's CIFAR10 that checks only the requested split and never downloads.

        With ``verify=False`` the md5 checks against torchvision's published checksums are
        skipped (for re-packed copies and test fixtures); the files must still exist.
        """

        def __init__(self, root: str, *, train: bool, transform: Callable | None, verify: bool):
            if not verify:
                self.train_list = [[name, None] for name, _ in CIFAR10.train_list]
                self.test_list = [[name, None] for name, _ in CIFAR10.test_list]
                self.meta = {**CIFAR10.meta, "md5": None}
            super().__init__(root, train=train, transform=transform, download=False)

        def _check_integrity(self) -> bool:
            files = self.train_list if self.train else self.test_list
            folder = os.path.join(self.root, self.base_folder)
            return all(check_integrity(os.path.join(folder, name), md5) for name, md5 in files)

        download = _refuse_download

    return _LocalCIFAR10


def _make_local_mnist() -> type:
    from torchvision.datasets import MNIST

    class _LocalMNIST(MNIST):
        """torchvision's MNIST reading ``<root>/MNIST`` (whatever the subclass name), the requested
        split only, never downloading."""

        @property
        def raw_folder(self) -> str:
            return os.path.join(self.root, "MNIST", "raw")

        @property
        def processed_folder(self) -> str:
            return os.path.join(self.root, "MNIST", "processed")

        def _check_exists(self) -> bool:
            return all(os.path.isfile(os.path.join(self.raw_folder, f)) for f in _mnist_raw_files(self.train))

        download = _refuse_download

    return _LocalMNIST


_LAZY_CLASSES = {"_LocalCIFAR10": _make_local_cifar10, "_LocalMNIST": _make_local_mnist}


def __getattr__(name: str) -> Any:
    # The torchvision subclasses are built on first use (keeping torchvision out of
    # ``import qfault.data``) and stored as module attributes, so pickle finds them by name
    # (DataLoader workers started with spawn).
    if name in _LAZY_CLASSES:
        cls = _LAZY_CLASSES[name]()
        cls.__module__, cls.__qualname__ = __name__, name
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lazy_class(name: str) -> type:
    return globals().get(name) or __getattr__(name)


def _default_transform(mean: tuple[float, ...], std: tuple[float, ...]):
    from torchvision import transforms as T

    return T.Compose([T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))])


_LOAD_ERRORS = (RuntimeError, AssertionError, TypeError, ValueError, KeyError, IndexError, EOFError,
                OSError, pickle.UnpicklingError)


def _construct(cls_name: str, root: Path, expected: str, runtime_hint: str | None = None, **kwargs) -> Dataset:
    """Instantiate a lazy torchvision subclass; its load errors become ``dataset.root`` errors."""
    try:
        dataset = _lazy_class(cls_name)(str(root), **kwargs)
    except QFaultConfigError:
        raise
    except _LOAD_ERRORS as exc:
        hint = f"malformed: {type(exc).__name__}: {exc}"
        if runtime_hint and type(exc) is RuntimeError:
            hint = runtime_hint
        raise _missing_root(root, expected, hint) from exc
    if len(dataset.data) != len(dataset.targets):
        raise _missing_root(root, expected,
                            f"malformed: {len(dataset.data)} images but {len(dataset.targets)} labels")
    return dataset


def cifar10(root: str | os.PathLike, train: bool = False, *, transform: Callable | None = None,
            verify: bool = True) -> Dataset:
    """CIFAR-10 from torchvision's local layout ``<root>/cifar-10-batches-py/``; never downloads.

    The split's pickled batches (``data_batch_1`` ... ``data_batch_5`` or ``test_batch``) and
    ``batches.meta`` must be there. They are Python pickles, so only point this at files you trust.

    Args:
        root: the folder that holds ``cifar-10-batches-py`` (as for torchvision).
        train: the 50,000 training images instead of the 10,000 test images.
        transform: replaces the default ``ToTensor`` + ``Normalize`` with the CIFAR-10 mean
            (0.4914, 0.4822, 0.4465) and std (0.2470, 0.2435, 0.2616).
        verify: check the files' md5 against torchvision's published checksums; ``False``
            accepts a re-packed copy.

    Returns:
        A torchvision ``CIFAR10`` (subclass) yielding ``(float tensor [3, 32, 32], int label)``.

    Raises:
        QFaultConfigError: ``dataset.root`` when the files are missing, fail the md5 check or
            cannot be read.

    Example:
        >>> test = cifar10("~/data")  # doctest: +SKIP
    """
    root = _check_root(root)
    check_bool("dataset.train", train)
    check_bool("dataset.verify", verify)
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    names.append("batches.meta")
    expected = "a folder holding cifar-10-batches-py/{" + ", ".join(names) + "} (torchvision's CIFAR-10 layout)"
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        if not root.is_dir():
            hint = "folder not found"
        elif (root / "test_batch").is_file() or (root / "batches.meta").is_file():
            hint = "this looks like cifar-10-batches-py itself: pass its parent folder"
        else:
            hint = "missing " + ", ".join(missing)
        raise _missing_root(root, expected, f"{hint}; {_NO_DOWNLOAD}")
    # The files exist, so a RuntimeError from torchvision here is its md5 check failing.
    md5_hint = ("md5 differs from torchvision's published checksums (a corrupt or re-packed copy); "
                "pass verify=False to accept it")
    transform = transform if transform is not None else _default_transform(CIFAR10_MEAN, CIFAR10_STD)
    return _construct("_LocalCIFAR10", root, expected, runtime_hint=md5_hint if verify else None,
                      train=train, transform=transform, verify=verify)


def _mnist_raw_files(train: bool) -> list[str]:
    prefix = "train" if train else "t10k"
    return [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]


def mnist(root: str | os.PathLike, train: bool = False, *, transform: Callable | None = None) -> Dataset:
    """MNIST from torchvision's local layout ``<root>/MNIST/raw/`` idx files; never downloads.

    Reads the uncompressed idx files of the split (``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte``, or ``train-*``), or torchvision's legacy
    ``MNIST/processed/{training,test}.pt`` when both are there.

    Args:
        root: the folder that holds ``MNIST`` (as for torchvision).
        train: the 60,000 training images instead of the 10,000 test images.
        transform: replaces the default ``ToTensor`` + ``Normalize(0.1307, 0.3081)``.

    Returns:
        A torchvision ``MNIST`` (subclass) yielding ``(float tensor [1, 28, 28], int label)``.

    Raises:
        QFaultConfigError: ``dataset.root`` when the files are missing or malformed.

    Example:
        >>> test = mnist("~/data")  # doctest: +SKIP
    """
    root = _check_root(root)
    check_bool("dataset.train", train)
    raw = root / "MNIST" / "raw"
    processed = root / "MNIST" / "processed"
    names = _mnist_raw_files(train)
    expected = "a folder holding MNIST/raw/{" + ", ".join(names) + "} (torchvision's MNIST layout, idx files)"
    legacy = all((processed / f).is_file() for f in ("training.pt", "test.pt"))
    missing = [n for n in names if not (raw / n).is_file()]
    if missing and not legacy:
        if not root.is_dir():
            hint = "folder not found"
        elif all((raw / f"{n}.gz").is_file() for n in missing):
            hint = f"only {missing[0]}.gz etc. found: decompress them (gunzip) in {raw}"
        elif (root / "raw").is_dir() or (root / names[0]).is_file():
            hint = "this looks like the MNIST folder (or its raw folder) itself: pass the folder holding MNIST/"
        else:
            hint = "missing " + ", ".join(missing)
        raise _missing_root(root, expected, f"{hint}; {_NO_DOWNLOAD}")
    return _construct("_LocalMNIST", root, expected, train=train,
                      transform=transform if transform is not None else _default_transform(MNIST_MEAN, MNIST_STD),
                      download=False)


# --------------------------------------------------------------------------------------------
# Bundled digits, registry, factory, loader
# --------------------------------------------------------------------------------------------
def digits_dataset(train: bool = False, *, test_fraction: float = 0.25, seed: int = 0) -> TensorDataset:
    """scikit-learn's bundled 8x8 digits split as :func:`~qfault.data.load_digits_split` does.

    Args:
        train: the training split instead of the test split.
        test_fraction: share of the 1,797 images in the test split.
        seed: seed of the split permutation.

    Returns:
        A ``TensorDataset`` of ``(float tensor [1, 8, 8] in [0, 1], int64 label)``.

    Example:
        >>> x, y = digits_dataset()[0]
        >>> tuple(x.shape)
        (1, 8, 8)
    """
    from ._digits import load_digits_split

    check_bool("dataset.train", train)
    check_range("dataset.test_fraction", test_fraction, 0.0, 1.0)
    check_range("dataset.seed", seed, 0, 2**63 - 1, integer=True)
    x_train, y_train, x_test, y_test = load_digits_split(test_fraction=test_fraction, seed=seed)
    return TensorDataset(x_train, y_train) if train else TensorDataset(x_test, y_test)


DATASETS.register("digits", digits_dataset)
DATASETS.register("imagenet_val", imagenet_val, aliases=("imagenet",))
DATASETS.register("cifar10", cifar10)
DATASETS.register("mnist", mnist)


def list_datasets(pattern: str = "*") -> list[str]:
    """Sorted registered dataset names matching a shell-style ``pattern``."""
    return DATASETS.list(pattern)


def build_dataset(spec: str | Mapping[str, Any], **overrides: Any) -> Dataset:
    """Build a registered dataset from a name or a dict ``{"name": ..., "root": ..., **kwargs}``.

    Args:
        spec: a dataset name (or alias), or a dict whose ``name`` picks the dataset and whose
            other keys are that dataset's keyword arguments.
        **overrides: keyword arguments applied over the dict's.

    Returns:
        The dataset.

    Raises:
        QFaultConfigError: ``dataset`` for an unknown name; ``dataset.<key>`` for a key the
            dataset does not take (the message lists the allowed keys) or a required key left out.

    Example:
        >>> len(build_dataset("digits"))
        449
        >>> ds = build_dataset({"name": "cifar10", "root": "~/data"})  # doctest: +SKIP
    """
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Mapping):
        kwargs = dict(spec)
        if "name" not in kwargs:
            raise QFaultConfigError("dataset.name", None, "one of " + ", ".join(DATASETS.list()),
                                    hint="a dataset dict needs a 'name' key")
        name = kwargs.pop("name")
    else:
        raise QFaultConfigError("dataset", spec, "a dataset name or a dict with a 'name' key")
    kwargs.update(overrides)
    canonical = DATASETS.canonical(name)
    factory = DATASETS.get(canonical)
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    allowed = [p for p, v in params.items() if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
    for key, value in kwargs.items():
        if not isinstance(key, str) or (key not in allowed and not takes_any):
            raise QFaultConfigError(f"dataset.{key}", value, "keys " + ", ".join(["name", *allowed]),
                                    hint=f"unknown key {key!r} for dataset {canonical!r}")
    for key, param in params.items():
        if param.default is param.empty and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD) \
                and key not in kwargs:
            raise QFaultConfigError(f"dataset.{key}", None, "a value",
                                    hint=f"required by dataset {canonical!r}")
    return factory(**kwargs)


def make_loader(dataset: Dataset | str | Mapping[str, Any], batch_size: int = 256, limit: int | None = None,
                num_workers: int = 0) -> DataLoader:
    """A ``DataLoader`` in dataset order (no shuffling), optionally over the first ``limit`` items.

    Args:
        dataset: a dataset, or a name / dict for :func:`build_dataset`.
        batch_size: items per batch (the last batch may be smaller).
        limit: keep only the first ``limit`` items (``None``: all).
        num_workers: loader worker processes (0 loads in the calling process).

    Returns:
        The loader; iterating it twice gives the same batches.

    Raises:
        QFaultConfigError: ``loader.batch_size``, ``loader.limit`` or ``loader.num_workers`` when
            invalid; see :func:`build_dataset` for a dataset spec.

    Example:
        >>> x, y = next(iter(make_loader("digits", batch_size=32, limit=100)))
        >>> tuple(x.shape), len(make_loader("digits", batch_size=32, limit=100))
        ((32, 1, 8, 8), 4)
    """
    check_range("loader.batch_size", batch_size, 1, 2**31 - 1, integer=True)
    _check_limit("loader.limit", limit)
    check_range("loader.num_workers", num_workers, 0, 1024, integer=True)
    if isinstance(dataset, (str, Mapping)):
        dataset = build_dataset(dataset)
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
