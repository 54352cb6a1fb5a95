"""Local-folder datasets, the dataset registry and the loader, on tiny fake datasets in tmp_path.

The expected values come from the files as written (pixel values, labels) and the documented
normalization formula, never from the code under test. No test may touch the network: an autouse
fixture makes sockets and torchvision's download helpers raise.
"""

from __future__ import annotations

import json
import pickle
import socket
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from qfault._errors import QFaultConfigError
from qfault.data import (
    DATASETS, ImageNetValFolder, build_dataset, cifar10, digits_dataset, imagenet_val, list_datasets,
    load_digits_split, make_loader, mnist,
)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465])
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616])

# file name -> synset; written in a scrambled order to check the sorting
SYNSETS = ["n01440764", "n01443537", "n01484850"]
IMAGENET_FILES = {
    "ILSVRC2012_val_00000004_n01484850.JPEG": "n01484850",
    "ILSVRC2012_val_00000001_n01440764.JPEG": "n01440764",
    "ILSVRC2012_val_00000003_n01440764.JPEG": "n01440764",
    "ILSVRC2012_val_00000002_n01443537.JPEG": "n01443537",
    "ILSVRC2012_val_00000005_n01443537.JPEG": "n01443537",
}
CONSTANT_RGB = (200, 100, 30)  # colour of ILSVRC2012_val_00000001


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dataset test tried to use the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import torchvision.datasets.utils as tv_utils

    for helper in ("download_url", "download_and_extract_archive", "download_file_from_google_drive"):
        monkeypatch.setattr(tv_utils, helper, refuse)
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.mnist as tv_mnist

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", refuse)
    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", refuse)


# --------------------------------------------------------------------------------------------
# Fake data on disk
# --------------------------------------------------------------------------------------------
@pytest.fixture
def imagenet_dir(tmp_path):
    root = tmp_path / "val"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate(IMAGENET_FILES):
        if name.startswith("ILSVRC2012_val_00000001_"):
            pixels = np.broadcast_to(np.array(CONSTANT_RGB, dtype=np.uint8), (30, 40, 3))
        else:
            pixels = rng.integers(0, 256, size=(20 + 4 * i, 44, 3), dtype=np.uint8)
        Image.fromarray(np.ascontiguousarray(pixels)).save(root / name, quality=95)
    (root / "README.txt").write_text("not an image")
    (root / "LOC_val_solution.csv").write_text("ignored")
    return root


def write_cifar(root, n_test=5, n_train_per_batch=2, seed=0):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{i}": n_train_per_batch for i in range(1, 6)} | {"test_batch": n_test}
    written = {}
    for name, n in batches.items():
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        if name == "test_batch":
            data[0] = np.repeat(np.array([10, 128, 250], dtype=np.uint8), 1024)  # constant per channel
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data,
                         "filenames": [f"{name}_{i}.png" for i in range(n)]}, f)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_cases_per_batch": n_test, "num_vis": 3072}, f)
    return written


def write_idx(path, array: np.ndarray):
    """The big-endian idx format: magic 0x0000 | type 0x08 (ubyte) | ndim, then the dims."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root, n_test=6, n_train=4, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    out = {}
    for prefix, n in (("t10k", n_test), ("train", n_train)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0] = 77
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[prefix] = (images, labels)
    return out


# --------------------------------------------------------------------------------------------
# ImageNet validation folder
# --------------------------------------------------------------------------------------------
def test_imagenet_labels_order_and_shapes(imagenet_dir):
    with pytest.warns(UserWarning, match="class_map"):
        ds = imagenet_val(imagenet_dir, image_size=16, resize=20)
    assert isinstance(ds, ImageNetValFolder)
    names = sorted(IMAGENET_FILES)
    assert [p.name for p in ds.files] == names
    assert ds.classes == SYNSETS
    assert ds.targets == [SYNSETS.index(IMAGENET_FILES[n]) for n in names]
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == torch.float32 and tuple(x.shape) == (3, 16, 16)
        assert isinstance(y, int) and y == ds.targets[i]


def test_imagenet_normalization_of_constant_image(imagenet_dir):
    ds = imagenet_val(imagenet_dir, class_map={s: i for i, s in enumerate(SYNSETS)}, image_size=8, resize=12)
    x, _ = ds[0]  # ILSVRC2012_val_00000001: a constant colour
    decoded = np.asarray(Image.open(ds.files[0]).convert("RGB"), dtype=np.float64)
    assert np.ptp(decoded.reshape(-1, 3), axis=0).max() <= 2  # JPEG keeps a flat colour (almost) flat
    expected = (decoded.reshape(-1, 3).mean(axis=0) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    torch.testing.assert_close(x.mean(dim=(1, 2)).double(), torch.tensor(expected), rtol=0, atol=0.01 / 0.229)
    assert abs(CONSTANT_RGB[0] / 255 - (x[0].mean().item() * 0.229 + 0.485)) < 2 / 255

    custom = imagenet_val(imagenet_dir, class_map={s: i for i, s in enumerate(SYNSETS)}, image_size=8,
                          mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    y, _ = custom[0]
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    torch.testing.assert_close(y.mean(dim=(1, 2)).double(), torch.tensor(decoded.reshape(-1, 3).mean(0) / 255),
                               rtol=0, atol=0.01)


def test_imagenet_resize_none_squashes_without_crop(imagenet_dir):
    from torchvision.transforms import functional as F

    cmap = {s: i for i, s in enumerate(SYNSETS)}
    squash = imagenet_val(imagenet_dir, cmap, image_size=10, resize=None)
    crop = imagenet_val(imagenet_dir, cmap, image_size=10, resize=10)
    idx = 1  # a random, non-square 32x44 image
    image = Image.open(squash.files[idx]).convert("RGB")
    reference = F.to_tensor(image.resize((10, 10), Image.BILINEAR))
    reference = (reference - torch.tensor(IMAGENET_MEAN).view(3, 1, 1).float()) / torch.tensor(
        IMAGENET_STD).view(3, 1, 1).float()
    x_squash, x_crop = squash[idx][0], crop[idx][0]
    assert tuple(x_squash.shape) == tuple(x_crop.shape) == (3, 10, 10)
    torch.testing.assert_close(x_squash, reference, rtol=0, atol=1e-5)
    assert not torch.allclose(x_squash, x_crop)


def test_imagenet_class_map_files(imagenet_dir, tmp_path):
    order = ["n01484850", "n09999999", "n01440764", "n01443537"]  # not sorted, one synset unused
    expected = {s: i for i, s in enumerate(order)}
    text = tmp_path / "synsets.txt"
    text.write_text("# comment\n" + "".join(f"{s} some description, words\n" for s in order) + "\n")
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(order))
    as_dict = tmp_path / "map.json"
    as_dict.write_text(json.dumps({s: i + 100 for s, i in expected.items()}))
    keras = tmp_path / "imagenet_class_index.json"
    keras.write_text(json.dumps({str(i): [s, f"name{i}"] for s, i in expected.items()}))
    names = sorted(IMAGENET_FILES)
    for class_map, offset in ((text, 0), (str(as_list), 0), (as_dict, 100), (keras, 0), (expected, 0)):
        ds = imagenet_val(imagenet_dir, class_map, image_size=8)
        assert ds.targets == [expected[IMAGENET_FILES[n]] + offset for n in names], class_map
        assert ds.class_to_idx == {s: i + offset for s, i in expected.items()}
        assert ds[0][1] == expected["n01440764"] + offset


def test_imagenet_builtin_imagenet1k_class_map(imagenet_dir):
    ds = imagenet_val(imagenet_dir, "imagenet-1k", image_size=8)
    # the first three ImageNet-1k classes: tench, goldfish, great white shark
    assert ds.targets == [SYNSETS.index(IMAGENET_FILES[n]) for n in sorted(IMAGENET_FILES)]
    assert len(ds.class_to_idx) == 1000


def test_imagenet_class_map_errors(imagenet_dir, tmp_path):
    incomplete = tmp_path / "few.txt"
    incomplete.write_text("n01440764\n")
    with pytest.raises(QFaultConfigError, match=r"dataset\.class_map.*n01443537"):
        imagenet_val(imagenet_dir, incomplete)
    with pytest.raises(QFaultConfigError, match=r"dataset\.class_map.*file not found"):
        imagenet_val(imagenet_dir, tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(QFaultConfigError, match=r"dataset\.class_map.*invalid JSON"):
        imagenet_val(imagenet_dir, bad)
    dup = tmp_path / "dup.txt"
    dup.write_text("n01440764\nn01440764\n")
    with pytest.raises(QFaultConfigError, match="listed twice"):
        imagenet_val(imagenet_dir, dup)
    with pytest.raises(QFaultConfigError, match=r"dataset\.class_map"):
        imagenet_val(imagenet_dir, {"n01440764": -1, "n01443537": 1, "n01484850": 2})


def test_imagenet_limit_keeps_first_files_and_all_classes(imagenet_dir):
    with pytest.warns(UserWarning):
        ds = imagenet_val(imagenet_dir, image_size=8, limit=2)
    assert [p.name for p in ds.files] == sorted(IMAGENET_FILES)[:2]
    assert ds.classes == SYNSETS  # classes come from every file, so labels do not depend on limit
    assert len(imagenet_val(imagenet_dir, {s: i for i, s in enumerate(SYNSETS)}, limit=0)) == 0


def test_imagenet_missing_and_malformed_folders(tmp_path, imagenet_dir):
    with pytest.raises(QFaultConfigError, match=r"dataset\.root.*ILSVRC2012_val_<n>_<synset>\.JPEG.*not found") as e:
        imagenet_val(tmp_path / "does-not-exist")
    assert e.value.field == "dataset.root"
    empty = tmp_path / "empty"
    (empty / "n01440764").mkdir(parents=True)
    with pytest.raises(QFaultConfigError, match=r"dataset\.root.*subfolder"):
        imagenet_val(empty)
    unnamed = tmp_path / "unnamed"
    unnamed.mkdir()
    Image.new("RGB", (4, 4)).save(unnamed / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(QFaultConfigError, match=r"dataset\.root.*without a synset"):
        imagenet_val(unnamed)
    (imagenet_dir / "ILSVRC2012_val_00000000_n01440764.JPEG").write_bytes(b"not a jpeg")
    ds = imagenet_val(imagenet_dir, {s: i for i, s in enumerate(SYNSETS)})
    with pytest.raises(QFaultConfigError, match=r"dataset\.root.*cannot read ILSVRC2012_val_00000000"):
        ds[0]


@pytest.mark.parametrize("kwargs, field", [
    ({"image_size": 0}, "dataset.image_size"),
    ({"image_size": 32, "resize": 16}, "dataset.resize"),
    ({"mean": (0.5, 0.5)}, "dataset.mean"),
    ({"std": (0.2, 0.0, 0.2)}, "dataset.std"),
    ({"limit": -1}, "dataset.limit"),
    ({"interpolation": "cubic-ish"}, "dataset.interpolation"),
])
def test_imagenet_invalid_arguments(imagenet_dir, kwargs, field):
    with pytest.raises(QFaultConfigError) as e:
        imagenet_val(imagenet_dir, {s: i for i, s in enumerate(SYNSETS)}, **kwargs)
    assert e.value.field == field


# --------------------------------------------------------------------------------------------
# CIFAR-10 and MNIST
# --------------------------------------------------------------------------------------------
def test_cifar10_reads_pickles(tmp_path):
    written = write_cifar(tmp_path)
    test = cifar10(tmp_path, verify=False)
    data, labels = written["test_batch"]
    assert len(test) == 5 and test.targets == labels
    x, y = test[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == (3, 32, 32) and y == labels[0]
    expected = (np.array([10, 128, 250]) / 255.0 - CIFAR_MEAN) / CIFAR_STD
    torch.testing.assert_close(x, torch.tensor(expected, dtype=torch.float32).view(3, 1, 1).expand(3, 32, 32),
                               rtol=0, atol=1e-5)
    # pixel (row 1, col 2) of channel c is data[c*1024 + 1*32 + 2], as in the CIFAR-10 format
    x1, _ = test[1]
    raw = torch.tensor([data[1][c * 1024 + 34] for c in range(3)]) / 255.0
    torch.testing.assert_close(x1[:, 1, 2], ((raw - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)).float(),
                               rtol=0, atol=1e-5)
    train = cifar10(tmp_path, train=True, verify=False)
    assert len(train) == 10
    assert train.targets == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])


def test_cifar10_checks_md5_by_default_and_never_downloads(tmp_path):
    write_cifar(tmp_path)
    with pytest.raises(QFaultConfigError, match=r"dataset\.root.*md5.*verify=False") as e:
        cifar10(tmp_path)
    assert e.value.field == "dataset.root"


def test_cifar10_missing_and_malformed(tmp_path):
    with pytest.raises(QFaultConfigError, match=r"dataset\.root.*cifar-10-batches-py.*not found"):
        cifar10(tmp_path / "nothing", verify=False)
    write_cifar(tmp_path)
    with pytest.raises(QFaultConfigError, match="pass its parent folder"):
        cifar10(tmp_path / "cifar-10-batches-py", verify=False)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(QFaultConfigError, match=r"dataset\.root.*missing data_batch_3"):
        cifar10(tmp_path, train=True, verify=False)
    assert len(cifar10(tmp_path, verify=False)) == 5  # the test split needs only its own files
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    with pytest.raises(QFaultConfigError, match=r"dataset\.root.*malformed"):
        cifar10(tmp_path, verify=False)


def test_mnist_reads_idx_files(tmp_path):
    written = write_mnist(tmp_path)
    test = mnist(tmp_path)
    images, labels = written["t10k"]
    assert len(test) == 6 and [int(t) for t in test.targets] == labels.tolist()
    x, y = test[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, 28, 28) and y == int(labels[0])
    torch.testing.assert_close(x, torch.full((1, 28, 28), (77 / 255 - 0.1307) / 0.3081), rtol=0, atol=1e-5)
    x1, _ = test[1]
    torch.testing.assert_close(x1[0, 3, 5], torch.tensor((images[1, 3, 5] / 255 - 0.1307) / 0.3081).float(),
                               rtol=0, atol=1e-5)
    train = mnist(tmp_path, train=True)
    assert len(train) == 4 and [int(t) for t in train.targets] == written["train"][1].tolist()


def test_mnist_legacy_processed_files(tmp_path):
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    images = torch.full((3, 28, 28), 255, dtype=torch.uint8)
    torch.save((images, torch.tensor([1, 2, 3])), processed / "test.pt")
    torch.save((images[:2], torch.tensor([4, 5])), processed / "training.pt")
    test = mnist(tmp_path)
    assert [test[i][1] for i in range(3)] == [1, 2, 3]
    torch.testing.assert_close(test[0][0], torch.full((1, 28, 28), (1 - 0.1307) / 0.3081), rtol=0, atol=1e-5)
    assert len(mnist(tmp_path, train=True)) == 2


def test_mnist_missing_and_malformed(tmp_path):
    with pytest.raises(QFaultConfigError, match=r"dataset\.root.*MNIST/raw.*not found") as e:
        mnist(tmp_path / "nothing")
    assert e.value.field == "dataset.root"
    raw = tmp_path / "gz" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (raw / name).write_bytes(b"")
    with pytest.raises(QFaultConfigError, match="gunzip"):
        mnist(tmp_path / "gz")
    write_mnist(tmp_path / "ok")
    with pytest.raises(QFaultConfigError, match="pass the folder holding MNIST"):
        mnist(tmp_path / "ok" / "MNIST")
    (tmp_path / "ok" / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x0c\x09" + b"\x00" * 8)
    with pytest.raises(QFaultConfigError, match=r"dataset\.root.*malformed"):
        mnist(tmp_path / "ok")
    labels_only = tmp_path / "mismatch"
    write_mnist(labels_only)
    write_idx(labels_only / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(2, dtype=np.uint8))
    with pytest.raises(QFaultConfigError, match="6 images but 2 labels"):
        mnist(labels_only)


def test_torchvision_datasets_pickle(tmp_path):
    """DataLoader workers started with spawn unpickle the dataset by class name."""
    write_cifar(tmp_path)
    write_mnist(tmp_path)
    for ds in (cifar10(tmp_path, verify=False), mnist(tmp_path)):
        clone = pickle.loads(pickle.dumps(ds))
        assert type(clone) is type(ds)
        torch.testing.assert_close(clone[1][0], ds[1][0], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# digits, registry, build_dataset, make_loader
# --------------------------------------------------------------------------------------------
def test_digits_dataset_matches_load_digits_split():
    x_train, y_train, x_test, y_test = load_digits_split()
    test, train = digits_dataset(), digits_dataset(train=True)
    assert torch.equal(test.tensors[0], x_test) and torch.equal(test.tensors[1], y_test)
    assert torch.equal(train.tensors[0], x_train) and torch.equal(train.tensors[1], y_train)


def test_registry_names_and_aliases():
    assert list_datasets() == ["cifar10", "digits", "imagenet_val", "mnist"]
    assert list_datasets("*net*") == ["imagenet_val"]
    assert DATASETS.canonical("imagenet") == "imagenet_val"
    assert DATASETS.get("IMAGENET") is imagenet_val


def test_build_dataset_from_name_and_dict(tmp_path, imagenet_dir):
    assert len(build_dataset("digits")) == len(digits_dataset())
    assert len(build_dataset({"name": "digits", "train": True})) == len(digits_dataset(train=True))
    ds = build_dataset({"name": "imagenet", "root": str(imagenet_dir), "class_map": "imagenet-1k",
                        "image_size": 8, "limit": 3})
    assert isinstance(ds, ImageNetValFolder) and len(ds) == 3 and tuple(ds[0][0].shape) == (3, 8, 8)
    write_cifar(tmp_path)
    assert len(build_dataset({"name": "cifar10", "root": tmp_path, "verify": False})) == 5
    write_mnist(tmp_path)
    assert len(build_dataset("mnist", root=tmp_path, train=True)) == 4


def test_build_dataset_errors(tmp_path):
    with pytest.raises(QFaultConfigError, match=r"dataset\.roots.*allowed keys name, root, train, transform, verify"
                                                r".*unknown key 'roots'") as e:
        build_dataset({"name": "cifar10", "roots": str(tmp_path)})
    assert e.value.field == "dataset.roots"
    with pytest.raises(QFaultConfigError, match=r"dataset\.root.*required"):
        build_dataset("cifar10")
    with pytest.raises(QFaultConfigError, match=r"dataset='imagenet21k'.*cifar10, digits, imagenet_val, mnist"):
        build_dataset("imagenet21k")
    with pytest.raises(QFaultConfigError, match=r"dataset\.name"):
        build_dataset({"root": str(tmp_path)})
    with pytest.raises(QFaultConfigError, match=r"^dataset="):
        build_dataset(42)
    with pytest.raises(QFaultConfigError, match=r"dataset\.root.*not found"):
        build_dataset({"name": "mnist", "root": str(tmp_path / "missing")})


def test_make_loader_is_deterministic_and_limited(imagenet_dir):
    ds = imagenet_val(imagenet_dir, {s: i for i, s in enumerate(SYNSETS)}, image_size=8)
    loader = make_loader(ds, batch_size=2)
    first = [(x.clone(), y.clone()) for x, y in loader]
    second = list(loader)
    assert [len(y) for _, y in first] == [2, 2, 1]
    assert torch.cat([y for _, y in first]).tolist() == ds.targets
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    limited = make_loader(ds, batch_size=2, limit=3)
    assert torch.cat([y for _, y in limited]).tolist() == ds.targets[:3]
    assert len(make_loader(ds, limit=100).dataset) == len(ds)
    x, y = next(iter(make_loader("digits", batch_size=7, limit=10)))
    assert tuple(x.shape) == (7, 1, 8, 8) and torch.equal(y, load_digits_split()[3][:7])


@pytest.mark.parametrize("kwargs, field", [
    ({"batch_size": 0}, "loader.batch_size"),
    ({"limit": -2}, "loader.limit"),
    ({"limit": 1.5}, "loader.limit"),
    ({"num_workers": -1}, "loader.num_workers"),
])
def test_make_loader_invalid_arguments(kwargs, field):
    with pytest.raises(QFaultConfigError) as e:
        make_loader(digits_dataset(), **kwargs)
    assert e.value.field == field

