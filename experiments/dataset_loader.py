"""Data sets for the experiments, split and scaled the same way for every model.

- `california_housing` (default): the StatLib file `cal_housing.data` from the directory in NTN_DATA_DIR,
  with scikit-learn's eight features; otherwise scikit-learn's `fetch_california_housing` (downloads).
- bundled with scikit-learn (offline): `diabetes` (regression); `iris`, `wine`, `breast_cancer`
  (classification).
- `synthetic`: a noisy degree-3 polynomial of 8 Gaussian features (regression), for tests.

Preprocessing, fitted on the training split only:
- inputs: `clip` (default) standardises each feature and clips it to ±CLIP_SIGMA (3) standard
  deviations, so heavy tails (California's AveOccup reaches ~120σ) cannot dominate a polynomial model;
  `quantile` maps each feature through its empirical quantiles to a standard normal;
  `standardize` only standardises;
- regression targets are standardised, so losses are in units of the target's training variance.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ntn.errors import NtnError

REGRESSION = ("california_housing", "diabetes", "synthetic")
CLASSIFICATION = ("iris", "wine", "breast_cancer")
DATASETS = REGRESSION + CLASSIFICATION
PREPROCESSING = ("clip", "quantile", "standardize")
CLIP_SIGMA = 3.0
SPLIT = (0.7, 0.15, 0.15)  # train, validation, test
CALIFORNIA_FEATURES = ["MedInc", "HouseAge", "AveRooms", "AveBedrms", "Population", "AveOccup", "Latitude", "Longitude"]


def quality_of(name: str) -> str:
    """The figure a data set's models are judged by: r2 (regression) or accuracy (classification)."""
    return "r2" if name in REGRESSION else "accuracy"


class DatasetError(NtnError, ValueError):
    """A data set cannot be loaded as asked."""


@dataclass
class Dataset:
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    task: str  # "regression" or "classification"
    n_outputs: int  # 1 for regression, the number of classes for classification
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def quality(self) -> str:
        return quality_of(self.info["name"])

    @property
    def provenance(self) -> dict[str, Any]:
        """The data's part of a run's provenance: the data set, the SHA-256 it was read with, the split."""
        keys = ("name", "source", "sha256", "n_total", "split", "data_seed")
        return {k: self.info[k] for k in keys} | {"preprocessing": self.info["preprocessing"]["inputs"]}


def _california(data_dir: str | None) -> tuple[np.ndarray, np.ndarray, str, str | None]:
    if data_dir:
        path = Path(data_dir) / "cal_housing.data"
        if not path.is_file():
            raise DatasetError(f"NTN_DATA_DIR={data_dir!r} has no cal_housing.data; point it at the folder holding it")
        content = path.read_bytes()
        try:
            raw = np.loadtxt(io.BytesIO(content), delimiter=",", ndmin=2)
            lon, lat, age, rooms, bedrooms, population, households, income, value = raw.T
        except ValueError as err:
            raise DatasetError(f"{path} is not the StatLib file of 9 numbers per line ({err})") from None
        X = np.column_stack(
            [income, age, rooms / households, bedrooms / households, population, population / households, lat, lon]
        )
        return X, value / 100_000, str(path), hashlib.sha256(content).hexdigest()
    try:
        from sklearn.datasets import fetch_california_housing

        with warnings.catch_warnings():  # its retries' warnings: the one line below says what failed
            warnings.simplefilter("ignore")
            bunch = fetch_california_housing()
    except Exception as err:
        raise DatasetError(
            "california_housing needs the StatLib file: set NTN_DATA_DIR to the folder holding cal_housing.data "
            f"(scikit-learn's download failed: {type(err).__name__})"
        ) from None
    return bunch.data, bunch.target, "sklearn.datasets.fetch_california_housing", None


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 8))
    y = X[:, 0] * X[:, 1] - 0.5 * X[:, 2] ** 2 + X[:, 3] * X[:, 4] * X[:, 5] + X[:, 6] - 0.3 * X[:, 7]
    return X, y + 0.1 * rng.standard_normal(n)


def _arrays_sha256(X: np.ndarray, y: np.ndarray) -> str:
    """The SHA-256 of a data set held as arrays (generated, or read by a library), as float64 and int64."""
    digest = hashlib.sha256(np.ascontiguousarray(X, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(y, dtype=np.float64 if y.dtype.kind == "f" else np.int64).tobytes())
    return digest.hexdigest()


def _raw(name: str, n_samples: int, data_seed: int) -> tuple[np.ndarray, np.ndarray, list[str], str, str]:
    """The data set's rows, its feature names, where it came from and a SHA-256 of it: of the file it was
    read from, else of its arrays."""
    if name == "california_housing":
        X, y, source, sha256 = _california(os.environ.get("NTN_DATA_DIR") or None)
        return X, y, CALIFORNIA_FEATURES, source, sha256 or _arrays_sha256(X, y)
    if name == "synthetic":
        X, y = _synthetic(n_samples or 2000, data_seed)
        return X, y, [f"x{i}" for i in range(8)], "synthetic degree-3 polynomial", _arrays_sha256(X, y)
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    features = [str(f) for f in bunch.feature_names]
    return bunch.data, bunch.target, features, f"sklearn.datasets.load_{name}", _arrays_sha256(bunch.data, bunch.target)


def _fit_inputs(X_train: np.ndarray, method: str):
    if method == "quantile":
        from sklearn.preprocessing import QuantileTransformer

        transformer = QuantileTransformer(
            n_quantiles=min(1000, len(X_train)), output_distribution="normal", random_state=0
        ).fit(X_train)
        return transformer.transform
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    if method == "standardize":
        return lambda X: (X - mean) / std
    return lambda X: np.clip((X - mean) / std, -CLIP_SIGMA, CLIP_SIGMA)


def _rank_within_class(y: np.ndarray) -> np.ndarray:
    """(position of each sample among its class + 1/2) / the class's size: sorting by it interleaves the
    classes in proportion, so every contiguous split holds each class's share."""
    rank = np.empty(len(y))
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        rank[members] = (np.arange(len(members)) + 0.5) / len(members)
    return rank


def load_dataset(name: str, n_samples: int = 0, data_seed: int = 0, preprocessing: str = "clip") -> Dataset:
    """Load, subsample (n_samples > 0: a seeded subsample; 0: all rows), split (stratified for
    classification) and scale a data set."""
    if name not in DATASETS:
        raise DatasetError(f"DATASET={name!r} is not known; known data sets: {', '.join(DATASETS)}")
    if preprocessing not in PREPROCESSING:
        raise DatasetError(f"PREPROCESSING={preprocessing!r} is not known; use one of {', '.join(PREPROCESSING)}")
    X, y, features, source, sha256 = _raw(name, n_samples, data_seed)
    rng = np.random.default_rng(data_seed)
    order = rng.permutation(len(X))
    if n_samples and n_samples < len(X):
        order = order[:n_samples]
    if name in CLASSIFICATION:  # stratified: each split keeps every class's share, to within one sample
        order = order[np.argsort(_rank_within_class(y[order]), kind="stable")]
    X, y = X[order].astype(np.float64), y[order]
    n_train = round(SPLIT[0] * len(X))
    n_val = round(SPLIT[1] * len(X))
    parts = np.split(np.arange(len(X)), [n_train, n_train + n_val])
    if min(map(len, parts)) == 0:
        raise DatasetError(f"N_SAMPLES={n_samples} leaves an empty split; use at least 10 samples")
    scale = _fit_inputs(X[parts[0]], preprocessing)
    task = "classification" if name in CLASSIFICATION else "regression"
    if task == "regression":
        y_mean, y_std = float(y[parts[0]].mean()), float(y[parts[0]].std()) or 1.0
        y = (y - y_mean) / y_std
        target = {"standardized": True, "train_mean": y_mean, "train_std": y_std}
        n_outputs = 1
    else:
        y = y.astype(np.int64)
        n_outputs = int(y.max()) + 1
        target = {"classes": n_outputs}
    (X_train, y_train), (X_val, y_val), (X_test, y_test) = ((scale(X[p]), y[p]) for p in parts)
    info = {
        "name": name,
        "task": task,
        "source": source,
        "sha256": sha256,
        "n_total": len(X),
        "n_train": len(parts[0]),
        "n_val": len(parts[1]),
        "n_test": len(parts[2]),
        "n_features": int(X.shape[1]),
        "features": features,
        "data_seed": data_seed,
        "split": dict(zip(("train", "val", "test"), SPLIT)),
        "preprocessing": {
            "inputs": preprocessing,
            **({"clip_sigma": CLIP_SIGMA} if preprocessing == "clip" else {}),
            "fitted_on": "train",
            "target": target,
        },
    }
    return Dataset(X_train, y_train, X_val, y_val, X_test, y_test, task, n_outputs, info)
