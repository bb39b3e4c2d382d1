"""The detector registry: a new detector is one class pair plus one register() call."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from asdflow import cli, detector, experiment
from asdflow.base import BaseDetector
from asdflow.data import load_audio
from asdflow.detector import MODELS, VARIANTS, Detector, DetectorConfig, ModelSpec, Variant
from asdflow.errors import ParameterError

MACHINE = "valve"


@dataclass(frozen=True)
class LoudnessConfig:
    """Settings of the toy detector."""

    seed: int = 0
    quantile: float = 0.9

    @classmethod
    def quick(cls, **changes: Any) -> LoudnessConfig:
        return cls(**changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoudnessConfig:
        return cls(**data)


class LoudnessDetector(BaseDetector):
    """A toy: how far a clip's log energy lies from the training clips' (in their spreads).

    Deriving from BaseDetector gives it predict, save, load and the fitted check.
    """

    file_kind, format_version, file_description = "tests.loudness", 1, "a loudness file"

    def __init__(self, config: LoudnessConfig, *, device: str | None = None, progress: bool = True):
        self.config, self.device, self.progress = config, device, progress

    @staticmethod
    def _energy(clips) -> np.ndarray:
        return np.array([np.log(np.mean(load_audio(c.path) ** 2) + 1e-12) for c in clips])

    def fit(self, data, *, domains=None) -> LoudnessDetector:
        energy = self._energy(data)
        self.machine_ = data[0].machine
        self.mean_, self.std_ = float(energy.mean()), float(energy.std() + 1e-9)
        self.threshold_ = float(np.quantile(self.score_samples(data), self.config.quantile))
        return self

    def score_samples(self, data) -> np.ndarray:
        return np.abs(self._energy(data) - self.mean_) / self.std_

    def learned_state(self) -> dict[str, Any]:
        names = ("machine", "mean", "std", "threshold")
        return {"config": self.config.to_dict(), **{k: getattr(self, k + "_") for k in names}}

    @classmethod
    def from_state(cls, data, *, device=None, progress=True) -> LoudnessDetector:
        det = cls(LoudnessConfig.from_dict(data["config"]), device=device, progress=progress)
        for name in ("machine", "mean", "std", "threshold"):
            setattr(det, name + "_", data[name])
        return det


@pytest.fixture
def loudness(monkeypatch: pytest.MonkeyPatch) -> ModelSpec:
    """The toy detector registered for one test (and removed after it)."""
    spec = ModelSpec("loud", "Loudness", "loudness.pt", LoudnessDetector, LoudnessConfig)
    monkeypatch.setitem(MODELS, spec.name, spec)
    return spec


def test_the_built_in_detectors_follow_the_protocols():
    for spec in MODELS.values():
        config = spec.config_class().quick()
        assert isinstance(config, DetectorConfig), spec.name
        assert spec.config_class().from_dict(config.to_dict()) == config
        for method in ("fit", "score_samples", "predict", "save", "load"):
            assert callable(getattr(spec.detector_class(), method)), (spec.name, method)
    assert VARIANTS["cflow-da"].model == "cflow"


def test_a_fitted_detector_satisfies_the_detector_protocol(factory):
    from asdflow import data

    clips = data.scan(factory, machines=MACHINE, split="train")
    det = MODELS["knn"].detector_class()(MODELS["knn"].config_class()(), progress=False)
    assert not isinstance(det, Detector)  # no threshold_ before fit
    assert isinstance(det.fit(clips), Detector)


def test_the_built_in_detectors_share_the_base_class_and_keep_their_files_apart(factory, tmp_path):
    from asdflow import data
    from asdflow.errors import ModelError

    classes = [spec.detector_class() for spec in MODELS.values()]
    assert all(issubclass(cls, BaseDetector) for cls in classes)
    assert len({cls.file_kind for cls in classes}) == len(classes)

    clips = data.scan(factory, machines=MACHINE, split="train")
    det = MODELS["knn"].detector_class()(MODELS["knn"].config_class()(), progress=False).fit(clips)
    scores = det.score_samples(clips[:3])
    assert np.array_equal(det.score(clips[:3]), scores)  # the old name gives the same scores
    assert np.array_equal(det.predict(clips[:3]), (scores > det.threshold_).astype(np.int64))
    path = det.save(tmp_path / "knn.pt")
    assert np.array_equal(type(det).load(path).score_samples(clips[:3]), scores)
    with pytest.raises(ModelError, match="autoencoder detector file"):
        MODELS["ae"].detector_class().load(path)


def test_register_refuses_a_name_twice_and_a_variant_of_an_unknown_model():
    with pytest.raises(ParameterError, match="already registered"):
        detector.register(ModelSpec("knn", "kNN", "x.pt", LoudnessDetector, LoudnessConfig))
    with pytest.raises(ParameterError, match="unknown model 'nope'"):
        detector.register(Variant("nope-v", "nope", "Nope"))
    assert "nope-v" not in VARIANTS


def test_the_registry_names_the_columns_and_files(loudness):
    assert experiment.METHODS["loud"] == "Loudness"
    assert experiment.DETECTOR_FILES["loud"] == "loudness.pt"
    assert detector.method_name("cflow", {"domain_aware": True}) == experiment.DOMAIN_AWARE_METHOD
    assert detector.method_name("cflow", {"domain_aware": False}) == "CFlow"
    assert detector.model_of_config(LoudnessConfig()) is loudness


@pytest.mark.slow
def test_a_new_detector_goes_through_train_test_evaluate_and_demo(
    loudness, factory, tmp_path, capsys, monkeypatch
):
    """One registry entry, and the command line, the run folders and the tables know it."""
    out = tmp_path / "loud"
    argv = ["train", factory, "--machine", MACHINE, "--model", "loud", "--out", out, "--quick"]
    assert cli.main([str(a) for a in argv]) == 0
    assert (out / "loudness.pt").is_file()
    info = experiment.read_run_info(out)
    assert (info.model, info.method) == ("loud", "Loudness")
    assert isinstance(experiment.load_detector(out), LoudnessDetector)
    assert cli.main(["test", str(out), str(factory), "--machine", MACHINE]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--root", str(factory), "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("| machine |"))
    assert header == "| machine | metric (%) | Loudness |"

    # The demo runs every registered detector: tiny settings on a one-machine factory.
    from asdflow import synth

    small = {"machines": (MACHINE,), "n_train_source": 14, "n_train_target": 2}
    monkeypatch.setattr(
        synth, "QUICK_FACTORY", {**synth.QUICK_FACTORY, **small, "n_test_per_domain": 2}
    )
    reproduce = experiment.reproduce
    tiny = {"cflow.n_blocks": 1, "cflow.fiber_batch": 64, "ae.batch_size": 256}
    monkeypatch.setattr(
        experiment,
        "reproduce",
        lambda *a, **k: reproduce(*a, **k, epochs=1, changes=tiny, progress=False),
    )
    assert cli.main(["demo", "--workdir", str(tmp_path / "demo")]) == 0
    demo = capsys.readouterr().out
    header = next(line for line in demo.splitlines() if line.startswith("| machine |"))
    assert header == (
        "| machine | metric (%) | Baseline | kNN | CFlow | CFlow (domain-aware) | Loudness |"
    )
