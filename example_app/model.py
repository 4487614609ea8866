"""The example's models: two versions of an iris classifier, two versions of a diabetes regressor,
and the data they were trained on.

Iris and diabetes ship inside scikit-learn, so nothing is downloaded. Both versions train in well under
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
#: the regression model served beside iris at ``/v1/models/diabetes:predict``
REGRESSOR_NAME = "diabetes"
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
class Regressor:
    """One trained regressor: predicted values for rows of named features."""

    version: str
    estimator: Any
    features: Tuple[str, ...]

    def predict(self, rows: Sequence[Dict[str, float]]) -> np.ndarray:
        matrix = np.array([[row[name] for name in self.features] for row in rows], dtype=float)
        return self.estimator.predict(matrix)


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


def feature_stats(name: str = MODEL_NAME) -> Dict[str, Tuple[float, float]]:
    """Mean and standard deviation of each feature in a model's reference data (drift injection)."""
    data = dataset_of(name)
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
    from mlmonitor.tools.profiling import build_profile

    data = dataset()
    primary = load_models()[VERSIONS[0]]
    probabilities = primary.estimator.predict_proba(data.x_train)
    predictions = [data.classes[int(i)] for i in probabilities.argmax(axis=1)]
    labels = [data.classes[int(y)] for y in data.y_train]
    return build_profile(
        data.x_train, feature_names=list(data.features), predictions=predictions, labels=labels,
        scores=probabilities.max(axis=1).tolist())


# -- the regression model ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def diabetes_dataset() -> Dataset:
    """Diabetes (442 patients, 10 features in their original units, disease progression after a
    year as the target), split 70/30 with a fixed seed; ``classes`` is empty."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    data = load_diabetes(scaled=False)
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.3, random_state=SEED)
    return Dataset(features=tuple(_snake(n) for n in data.feature_names), classes=(),
                   x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def dataset_of(name: str) -> Dataset:
    """The data of the model called ``name`` (``iris`` or ``diabetes``)."""
    return {MODEL_NAME: dataset, REGRESSOR_NAME: diabetes_dataset}[name]()


@functools.lru_cache(maxsize=1)
def load_regressors() -> Dict[str, Regressor]:
    """Train ``v1`` (ridge regression) and ``v2`` (gradient boosting); same result every time."""
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = diabetes_dataset()
    estimators = {
        "v1": make_pipeline(StandardScaler(), Ridge(alpha=1.0)),
        "v2": GradientBoostingRegressor(n_estimators=100, max_depth=2, random_state=SEED),
    }
    return {version: Regressor(version, est.fit(data.x_train, data.y_train), data.features)
            for version, est in estimators.items()}


def regression_rows() -> Tuple[List[Dict[str, float]], List[float]]:
    """The diabetes training split as named rows and their true targets."""
    data = diabetes_dataset()
    rows = [dict(zip(data.features, map(float, x))) for x in data.x_train]
    return rows, [float(y) for y in data.y_train]


def feature_means(name: str) -> Dict[str, float]:
    """Mean of each feature of a model's training data: what a missing value is imputed with."""
    return {feature: mean for feature, (mean, _) in feature_stats(name).items()}


def holdout_mae(version: str) -> float:
    """Mean absolute error of one diabetes version on the held-out split."""
    data = diabetes_dataset()
    predicted = load_regressors()[version].estimator.predict(data.x_test)
    return float(np.mean(np.abs(predicted - data.y_test)))


@functools.lru_cache(maxsize=1)
def regression_reference_profile() -> Any:
    """The diabetes baseline: the training split with ``v1``'s predictions and the true targets,
    so the profile holds output bins (quantiles of the predictions) and the reference MAE."""
    from mlmonitor.tools.profiling import build_profile

    data = diabetes_dataset()
    predictions = load_regressors()[VERSIONS[0]].estimator.predict(data.x_train)
    return build_profile(
        data.x_train, feature_names=list(data.features), predictions=predictions.tolist(),
        labels=data.y_train.tolist(), task="regression")
