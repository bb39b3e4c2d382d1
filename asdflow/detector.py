"""What a detector provides, and the registry of the detectors the command line knows.

A detector learns the normal sound of one machine type and scores clips
(higher = more anomalous). asdflow has three: the DCASE 2024 baseline
autoencoder (:mod:`asdflow.baseline`), the nearest-neighbour reference
(:mod:`asdflow.knn`) and the report's CFlow (:mod:`asdflow.cflow`). The
run folders, ``reproduce``, the demo, the result tables and the command
line (``--model``) know them only through :data:`MODELS`: adding a
detector means writing one module with a configuration class and a
detector class that follow :class:`DetectorConfig` and :class:`Detector`,
and one :func:`register` call.

The built-in entries name their classes as ``"module:Class"`` strings,
imported on first use, so that importing this module does not import torch
or the detectors (and the detector modules may import this one).

Examples
--------
>>> list(MODELS)
['cflow', 'ae', 'knn']
>>> MODELS["knn"].method, MODELS["knn"].file
('kNN', 'knn.pt')
>>> model_spec("cflow").detector_class().__name__
'CFlowDetector'
>>> VARIANTS["cflow-da"].settings
{'domain_aware': True}
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from asdflow.errors import ParameterError

if TYPE_CHECKING:  # only for annotations: the command line imports this module for --help
    import numpy as np

__all__ = [
    "MODELS",
    "VARIANTS",
    "Detector",
    "DetectorConfig",
    "ModelSpec",
    "ResumableDetector",
    "Variant",
    "method_name",
    "model_of_config",
    "model_spec",
    "register",
    "table_order",
]


@runtime_checkable
class DetectorConfig(Protocol):
    """The settings of a detector: a frozen dataclass with these members.

    ``quick()`` gives the settings of quick mode (CPU-friendly; the same as
    the full ones when there is nothing to shrink). ``to_dict`` /
    ``from_dict`` round-trip through plain JSON values: ``run.json``
    records them and a run folder is reused only when they match.
    """

    __dataclass_fields__: ClassVar[dict[str, Any]]
    seed: int

    @classmethod
    def quick(cls, **changes: Any) -> DetectorConfig: ...

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig: ...


@runtime_checkable
class Detector(Protocol):
    """A detector of one machine type, built as ``Detector(config, device=..., progress=...)``.

    Attributes
    ----------
    config : DetectorConfig
        The settings it was built with.
    machine_ : str
        The machine type it was trained on (after :meth:`fit`).
    threshold_ : float
        Decision threshold: a clip whose score exceeds it is declared anomalous.
    """

    config: Any
    machine_: str | None
    threshold_: float

    def __init__(
        self, config: Any = None, *, device: Any = None, progress: bool = True
    ) -> None: ...

    def fit(self, data: Sequence[Any], *, domains: Sequence[str] | None = None) -> Detector:
        """Learn from normal training clips (:class:`asdflow.data.Clip`) of one machine type."""
        ...

    def score_samples(self, data: Sequence[Any]) -> np.ndarray:
        """Anomaly score of each clip, shape (n,), float64, higher = more anomalous.

        The sign is DCASE's; scikit-learn's outlier detectors use the opposite one.
        """
        ...

    def predict(self, data: Sequence[Any]) -> np.ndarray:
        """1 for clips whose score exceeds ``threshold_``, else 0."""
        ...

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted detector to ``path`` (atomically) and return the path."""
        ...

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, device: str | None = None, progress: bool = True
    ) -> Detector:
        """A detector saved by :meth:`save`."""
        ...


@runtime_checkable
class ResumableDetector(Detector, Protocol):
    """A detector whose training can resume after an interruption (``ModelSpec.resumable``)."""

    def fit(
        self,
        data: Sequence[Any],
        *,
        domains: Sequence[str] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> ResumableDetector:
        """As :meth:`Detector.fit`; progress is saved in ``checkpoint`` and resumed from it."""
        ...


def _resolve(reference: type | str) -> type:
    """A class, or the class a ``"module:Class"`` string names (imported now)."""
    if not isinstance(reference, str):
        return reference
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ModelSpec:
    """One registered detector.

    Parameters
    ----------
    name : str
        Its name on the command line and in run folders (``--model knn``).
    method : str
        Its column name in result tables (``"kNN"``).
    file : str
        File name of the saved detector in a run folder (``"knn.pt"``).
    detector, config : type or str
        The detector class and its configuration class, or ``"module:Class"``.
    resumable : bool
        ``fit`` accepts ``checkpoint=PATH`` and resumes an interrupted training
        from it (CFlow).
    feature_images : bool
        The configuration has a ``features`` field, which a run sets to the
        machine type's nominal clip length
        (:meth:`asdflow.features.FeatureConfig.with_nominal_length`).
    help : str
        One line for ``asdflow train --help``.
    column : int
        Position of its column in result tables (lower = further left; the
        built-in ones are 0-2, a new detector's column comes after them).
    """

    name: str
    method: str
    file: str
    detector: type | str
    config: type | str
    resumable: bool = False
    feature_images: bool = False
    help: str = ""
    column: int = 100

    def detector_class(self) -> type[Detector]:
        """The detector class (imported on first use)."""
        return _resolve(self.detector)

    def config_class(self) -> type[DetectorConfig]:
        """The configuration class (imported on first use)."""
        return _resolve(self.config)


@dataclass(frozen=True)
class Variant:
    """A registered detector with fixed settings, run beside the models by ``reproduce``.

    Its runs live in ``out/<name>/<machine>/seed<S>`` and its column is ``method``.
    """

    name: str
    model: str
    method: str
    settings: dict[str, Any] = field(default_factory=dict)


MODELS: dict[str, ModelSpec] = {}
"""The registered detectors, by name, in the order they were registered."""

VARIANTS: dict[str, Variant] = {}
"""Named variants of registered detectors (``"cflow-da"``: the domain-aware CFlow)."""


def register(entry: ModelSpec | Variant) -> ModelSpec | Variant:
    """Add a detector (or a variant of one) to the registry; a name is registered once.

    Examples
    --------
    >>> spec = ModelSpec("rms", "RMS", "rms.pt", detector="mymodule:RMSDetector",
    ...                  config="mymodule:RMSConfig")
    >>> register(spec) is spec
    True
    >>> "rms" in MODELS
    True
    >>> del MODELS["rms"]
    """
    if entry.name in MODELS or entry.name in VARIANTS:
        raise ParameterError(f"a detector named {entry.name!r} is already registered")
    if isinstance(entry, Variant):
        model_spec(entry.model)
        VARIANTS[entry.name] = entry
    else:
        MODELS[entry.name] = entry
    return entry


def model_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; an unknown name is an error that lists the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ParameterError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


def model_of_config(config: object) -> ModelSpec:
    """The registry entry whose configuration class ``config`` is an instance of."""
    for spec in MODELS.values():
        if isinstance(config, spec.config_class()):
            return spec
    raise ParameterError(f"not a detector configuration: {type(config).__name__}")


def method_name(model: str, config: Mapping[str, Any] | None = None) -> str:
    """The result-table column of a run of ``model`` with the recorded settings ``config``.

    A run whose settings include every setting of a variant of ``model`` is
    that variant's column; other names fall back to themselves.

    Examples
    --------
    >>> method_name("cflow"), method_name("cflow", {"domain_aware": True, "seed": 1})
    ('CFlow', 'CFlow (domain-aware)')
    """
    config = config or {}
    for variant in VARIANTS.values():
        if variant.model == model and all(config.get(k) == v for k, v in variant.settings.items()):
            return variant.method
    return MODELS[model].method if model in MODELS else model


def table_order() -> list[str]:
    """Every registered name (models and variants) in the order of result-table columns.

    Models by :attr:`ModelSpec.column`, each followed by its variants.

    Examples
    --------
    >>> table_order()
    ['ae', 'knn', 'cflow', 'cflow-da']
    """
    names = []
    for name in sorted(MODELS, key=lambda n: MODELS[n].column):
        names.append(name)
        names += [v.name for v in VARIANTS.values() if v.model == name]
    return names


class FieldView(Mapping[str, str]):
    """A read-only ``{name: value}`` view of one field of every registry entry."""

    def __init__(self, attribute: str) -> None:
        self._attribute = attribute

    def __getitem__(self, name: str) -> str:
        return getattr(MODELS[name], self._attribute)

    def __iter__(self) -> Iterator[str]:
        return iter(MODELS)

    def __len__(self) -> int:
        return len(MODELS)

    def __repr__(self) -> str:
        return repr(dict(self))


register(
    ModelSpec(
        "cflow",
        "CFlow",
        "cflow.pt",
        detector="asdflow.cflow:CFlowDetector",
        config="asdflow.cflow:CFlowConfig",
        resumable=True,
        feature_images=True,
        help="CFlow, the report's detector",
        column=2,
    )
)
register(
    ModelSpec(
        "ae",
        "Baseline",
        "autoencoder.pt",
        detector="asdflow.baseline:AutoencoderDetector",
        config="asdflow.baseline:AEConfig",
        help="the DCASE 2024 baseline autoencoder",
        column=0,
    )
)
register(
    ModelSpec(
        "knn",
        "kNN",
        "knn.pt",
        detector="asdflow.knn:KNNDetector",
        config="asdflow.knn:KNNConfig",
        help="the nearest-neighbour reference on log-mel statistics",
        column=1,
    )
)
register(Variant("cflow-da", "cflow", "CFlow (domain-aware)", {"domain_aware": True}))
