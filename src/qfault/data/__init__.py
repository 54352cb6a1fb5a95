"""Built-in data and demo models (no downloads: scikit-learn's bundled digits)."""

from ._digits import load_digits_split
from ._models import MODELS, accuracy, build_model, list_models, train_classifier

__all__ = ["load_digits_split", "build_model", "list_models", "train_classifier", "accuracy", "MODELS"]
