"""The example's models: two versions of an iris classifier and the data they were trained on.

Iris ships inside scikit-learn, so nothing is downloaded. Both versions train in well under
a second with fixed seeds, so they are trained at start-up (once per process) rather than
stored as artifacts: every gunicorn worker gets the same models, which is what lets a
prediction made by one worker be scored against feedback that lands on another.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

MODEL_NAME = "iris"
VERSIONS = ("v1", "v2")
SEED = 0


def _snake(name: str) -> str:
    """``"sepal length (cm)"`` -> ``"sepal_length_cm"``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@dataclass(frozen=True)
class ModelVersion:
    """One trained estimator with the names it needs to speak JSON."""

    version: str
    estimator: Any
    features: Tuple[str, ...]
    classes: Tuple[str, ...]

    def predict_proba(self, rows: Sequence[Dict[str, float]]) -> np.ndarray:
        """Class probabilities for rows of named features, columns in ``classes`` order."""
        matrix = np.array([[row[name] for name in self.features] for row in rows], dtype=float)
        return self.estimator.predict_proba(matrix)


@dataclass(frozen=True)
class Dataset:
    """The train / test split both versions share."""

    features: Tuple[str, ...]
    classes: Tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@functools.lru_cache(maxsize=1)
def dataset() -> Dataset:
    """Iris, split 70/30, stratified, with a fixed seed."""
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    data = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.3, random_state=SEED, stratify=data.target
    )
    return Dataset(
        features=tuple(_snake(n) for n in data.feature_names),
        classes=tuple(str(c) for c in data.target_names),
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
    )


@functools.lru_cache(maxsize=1)
def load_models() -> Dict[str, ModelVersion]:
    """Train ``v1`` (logistic regression) and ``v2`` (gradient boosting); same result every time."""
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = dataset()
    estimators = {
        "v1": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=SEED)),
        "v2": GradientBoostingClassifier(n_estimators=50, max_depth=2, random_state=SEED),
    }
    return {
        version: ModelVersion(version, est.fit(data.x_train, data.y_train), data.features, data.classes)
        for version, est in estimators.items()
    }


def reference_rows() -> Tuple[List[Dict[str, float]], List[str]]:
    """The training split as named rows and class names: the data a reference profile describes."""
    data = dataset()
    rows = [dict(zip(data.features, map(float, x))) for x in data.x_train]
    labels = [data.classes[int(y)] for y in data.y_train]
    return rows, labels


def feature_stats() -> Dict[str, Tuple[float, float]]:
    """Mean and standard deviation of each feature in the reference data (for drift injection)."""
    data = dataset()
    return {
        name: (float(data.x_train[:, i].mean()), float(data.x_train[:, i].std()))
        for i, name in enumerate(data.features)
    }


def holdout_accuracy(version: str) -> float:
    """Accuracy of one version on the held-out split (what the README quotes)."""
    data = dataset()
    model = load_models()[version]
    return float(model.estimator.score(data.x_test, data.y_test))


@functools.lru_cache(maxsize=1)
def reference_profile() -> Any:
    """The drift baseline: the training split profiled with ``v1``'s predictions and scores.

    Built in memory at start-up (a few milliseconds); every worker builds the same one because
    the data and the model are deterministic.
    """
    from mlmonitor.quality import ReferenceProfile

    data = dataset()
    primary = load_models()[VERSIONS[0]]
    probabilities = primary.estimator.predict_proba(data.x_train)
    predictions = [data.classes[int(i)] for i in probabilities.argmax(axis=1)]
    labels = [data.classes[int(y)] for y in data.y_train]
    return ReferenceProfile.build(
        data.x_train, feature_names=list(data.features), predictions=predictions, labels=labels,
        scores=probabilities.max(axis=1).tolist())
