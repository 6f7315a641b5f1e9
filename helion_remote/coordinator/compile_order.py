"""Longest-compile-first order for a batch, learned from this search's own compiles.

A batch ends when its slowest config has compiled and run.  On several GPUs
the batch is short enough that a 4 s compile started late trails it by
seconds while the GPUs idle (measured on 2x H200: ~2 s of an 8.8 s batch).
Starting the expensive compiles first (LPT scheduling) hides them behind the
cheap ones.  Compile time is predicted from the configs already compiled in
this search: the mean log-time of the nearest configs, with numeric settings
compared on a log2 scale and the rest by equality.  No history, no reordering.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_ABSENT = "<absent>"


def config_features(config: Mapping[str, Any]) -> dict[str, float | str]:
    """Flatten a config: numbers become ``log2(1 + |v|)``, everything else a category."""
    features: dict[str, float | str] = {}

    def walk(name: str, value: object) -> None:
        if isinstance(value, bool) or value is None or isinstance(value, str):
            features[name] = repr(value)
        elif isinstance(value, (int, float)):
            features[name] = math.log2(1.0 + abs(float(value)))
        elif isinstance(value, (list, tuple)):
            for position, item in enumerate(value):
                walk(f"{name}[{position}]", item)
        elif isinstance(value, Mapping):
            for key in sorted(value):
                walk(f"{name}.{key}", value[key])
        else:
            features[name] = repr(value)

    for key in sorted(config):
        walk(str(key), config[key])
    return features


class CompileCostModel:
    """Nearest-neighbour compile-time predictor over one search's observations."""

    def __init__(self, *, neighbours: int = 5, max_history: int = 1024, cheap_first: int = 8) -> None:
        if neighbours < 1 or max_history < neighbours:
            raise ValueError(f"need 1 <= neighbours <= max_history, got {neighbours}, {max_history}")
        self.neighbours = neighbours
        self.cheap_first = cheap_first
        """Predicted-cheapest configs that lead each batch, so the devices start at once."""
        self._history: collections.deque[tuple[dict[str, float | str], float]] = collections.deque(maxlen=max_history)
        self._matrices: tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray] | None = None
        self.batches_ordered = 0
        self._predicted: dict[int, float] = {}
        """id(config) -> prediction for the batch being ordered, scored as its compiles land."""
        self.scored: list[tuple[float, float]] = []
        """(predicted, observed) seconds for every config dispatched in predicted order."""

    def __len__(self) -> int:
        return len(self._history)

    def observe(self, config: Mapping[str, Any], seconds: float | None) -> None:
        """Record how long ``config`` took to compile (ignored when unknown)."""
        if seconds is None or not math.isfinite(seconds) or seconds < 0:
            return
        if id(config) in self._predicted:
            self.scored.append((self._predicted.pop(id(config)), seconds))
        self._history.append((config_features(config), math.log(seconds + 1e-3)))
        self._matrices = None

    def _fitted(self) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
        if self._matrices is None:
            numeric: dict[str, None] = {}
            categorical: dict[str, None] = {}
            for features, _ in self._history:
                for name, value in features.items():
                    (categorical if isinstance(value, str) else numeric)[name] = None
            num_names, cat_names = list(numeric), list(categorical)
            num = np.array([[_number(f.get(n)) for n in num_names] for f, _ in self._history], dtype=np.float64)
            cat = np.array([[str(f.get(n, _ABSENT)) for n in cat_names] for f, _ in self._history], dtype=object)
            logs = np.array([log for _, log in self._history], dtype=np.float64)
            self._matrices = (num_names, cat_names, num.reshape(len(logs), len(num_names)),
                              cat.reshape(len(logs), len(cat_names)), logs)
        return self._matrices

    def predict(self, config: Mapping[str, Any]) -> float | None:
        """Predicted compile seconds, or None before ``neighbours`` observations."""
        if len(self._history) < self.neighbours:
            return None
        num_names, cat_names, num, cat, logs = self._fitted()
        features = config_features(config)
        query_num = np.array([_number(features.get(n)) for n in num_names], dtype=np.float64)
        query_cat = np.array([str(features.get(n, _ABSENT)) for n in cat_names], dtype=object)
        distance = np.abs(num - query_num).sum(axis=1) + (cat != query_cat).sum(axis=1)
        nearest = np.argpartition(distance, self.neighbours - 1)[: self.neighbours]
        return float(math.exp(logs[nearest].mean()))

    def order(self, configs: Sequence[Mapping[str, Any]]) -> list[int]:
        """Indices into ``configs`` in dispatch order: a few cheap ones, then longest first.

        Identity order while the model has too little history to predict.
        """
        self._predicted = {}
        predicted = [self.predict(config) for config in configs]
        if any(p is None for p in predicted) or len(configs) <= self.cheap_first:
            return list(range(len(configs)))
        self.batches_ordered += 1
        self._predicted = {id(config): p for config, p in zip(configs, predicted)}  # type: ignore[misc]
        ascending = sorted(range(len(configs)), key=lambda i: predicted[i])  # type: ignore[arg-type,return-value]
        lead = ascending[: self.cheap_first]
        return lead + sorted(ascending[self.cheap_first:], key=lambda i: -predicted[i])  # type: ignore[operator]

    def rank_correlation(self) -> float | None:
        """Spearman correlation of predicted and observed compile times (None with < 3 pairs)."""
        if len(self.scored) < 3:
            return None
        predicted, observed = (np.argsort(np.argsort(column)) for column in zip(*self.scored))
        if predicted.std() == 0 or observed.std() == 0:
            return None
        return float(np.corrcoef(predicted, observed)[0, 1])

    def summary(self) -> dict[str, object]:
        """What the ordering did this search (``stats["compile_order"]``)."""
        correlation = self.rank_correlation()
        return {
            "batches_ordered": self.batches_ordered,
            "scored": len(self.scored),
            "rank_correlation": None if correlation is None else round(correlation, 3),
        }


def _number(value: float | str | None) -> float:
    return value if isinstance(value, float) else 0.0


def compile_seconds(stages: Mapping[str, float], compile_time_s: float | None) -> float | None:
    """A job's compile cost: the compile stage's wall time where the executor reports it."""
    wall = stages.get("compile_wall")
    return wall if wall is not None else compile_time_s
