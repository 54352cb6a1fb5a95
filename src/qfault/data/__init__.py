"""Built-in data and demo models (no downloads: scikit-learn's bundled digits)."""

from ._digits import load_digits_split
from ._models import MODELS, accuracy, build_model, cache_dir, list_models, load_demo_model, train_classifier
from . import _brevitas_models as _registers_brevitas_models  # registers quant_cnv and quant_resnet20
from ._folders import (
    DATASETS, ImageNetValFolder, build_dataset, cifar10, digits_dataset, imagenet_val, list_datasets,
    make_loader, mnist, register_dataset,
)

__all__ = ["load_digits_split", "build_model", "list_models", "train_classifier", "accuracy", "MODELS",
           "cache_dir", "load_demo_model",
           "DATASETS", "ImageNetValFolder", "build_dataset", "cifar10", "digits_dataset", "imagenet_val",
           "list_datasets", "make_loader", "mnist", "register_dataset"]

del _registers_brevitas_models
