"""Tests of asdflow.experiment: run folders, training, DCASE files, ground truth, shared cache."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import asdflow
from asdflow import data, evaluation, experiment, files
from asdflow.baseline import AEConfig
from asdflow.cflow import CFlowConfig, CFlowDetector
from asdflow.errors import (
    AsdflowError,
    LayoutError,
    ModelError,
    ParameterError,
    SubmissionError,
)
from asdflow.modes import Mode

MACHINE = "valve"
TINY_AE = {"epochs": 1, "batch_size": 256}
TINY_CFLOW = {"n_blocks": 1, "fiber_batch": 256}


pytestmark = pytest.mark.usefixtures("shared_cache")


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Content and modification time of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def ae_config(factory: Path, seed: int = 0, **changes) -> AEConfig:
    settings = {**TINY_AE, **changes}
    return experiment.run_config("ae", factory, MACHINE, quick=True, seed=seed, changes=settings)


@pytest.fixture(scope="module")
def ae_run(factory: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with a tiny trained autoencoder and its DCASE files."""
    out = tmp_path_factory.mktemp("ae-run")
    experiment.train_run(
        factory, MACHINE, out, model="ae", config=ae_config(factory), quick=True, progress=False
    )
    experiment.score_run(out, factory, MACHINE, progress=False)
    return out


# ---------------------------------------------------------------- settings


def test_parse_settings_reads_json_values_and_keeps_strings():
    got = experiment.parse_settings(["n_blocks=2", "lr=1e-4", "weights=random", "x=null"])
    assert got == {"n_blocks": 2, "lr": 1e-4, "weights": "random", "x": None}
    with pytest.raises(AsdflowError, match="FIELD=VALUE"):
        experiment.parse_settings(["n_blocks"])


def test_run_config_quick_cflow_uses_the_nominal_length(factory):
    config = experiment.run_config("cflow", factory, MACHINE, quick=True, seed=3, epochs=2)
    n_samples = int(2.0 * data.SAMPLE_RATE)  # QUICK_FACTORY clips are 2 s long
    assert config.features.n_samples == n_samples
    expected = CFlowConfig.quick(seed=3, epochs=2, features=config.features)
    assert config == expected
    full = experiment.run_config("cflow", factory, MACHINE, quick=False)
    assert (full.backbone, full.weights) == ("wide_resnet50_2", "imagenet")


def test_run_config_ae_and_unknown_fields(factory):
    assert experiment.run_config("ae", factory, MACHINE, quick=True, seed=1) == AEConfig.quick(
        seed=1
    )
    with pytest.raises(ParameterError, match="unknown AEConfig field.*n_blocks"):
        experiment.run_config("ae", factory, MACHINE, changes={"n_blocks": 2})
    with pytest.raises(ParameterError, match="unknown model 'pca'"):
        experiment.run_config("pca", factory, MACHINE)
    with pytest.raises(LayoutError, match="pump"):
        experiment.run_config("cflow", factory, "pump")


# ---------------------------------------------------------------- train and score


def test_train_run_writes_detector_and_record(ae_run, factory):
    info = experiment.read_run_info(ae_run)
    train = [c for c in data.scan(factory, machines=MACHINE, split="train")]
    assert (info.machine, info.model, info.seed, info.mode) == (MACHINE, "ae", 0, "quick")
    assert info.config == ae_config(factory).to_dict()
    assert info.n_train == len(train) == 44
    assert info.data == experiment.data_fingerprint(train)
    assert info.versions["asdflow"] == asdflow.__version__
    assert info.hardware.startswith("CPU ") and info.train_seconds > 0
    assert info.n_test == 40 and info.test_seconds > 0
    assert experiment.has_detector(ae_run) and experiment.is_finished(ae_run, MACHINE)
    assert not (ae_run / experiment.CHECKPOINT_FILE).exists()
    visible = [p.name for p in ae_run.iterdir() if p.name != files.LOCK_FILE]
    assert sorted(visible) == sorted(
        [
            "autoencoder.pt",
            "run.json",
            evaluation.score_file_name(MACHINE),
            evaluation.decision_file_name(MACHINE),
        ]
    )


def test_score_run_files_match_the_detector(ae_run, factory):
    clips = data.scan(factory, machines=MACHINE, split="test")
    detector = experiment.load_detector(ae_run, progress=False)
    names = [c.name for c in clips]
    scores = evaluation.read_scores(ae_run / evaluation.score_file_name(MACHINE), expected=names)
    decisions = evaluation.read_decisions(
        ae_run / evaluation.decision_file_name(MACHINE), expected=names
    )
    direct = detector.score(clips)
    assert np.array_equal([scores[n] for n in names], direct)
    assert [decisions[n] for n in names] == list((direct > detector.threshold_).astype(int))


def test_existing_detector_and_files_are_not_replaced(ae_run, factory):
    before = snapshot(ae_run)
    with pytest.raises(ModelError, match="already holds a Baseline detector of valve"):
        experiment.train_run(factory, MACHINE, ae_run, model="ae", quick=True, progress=False)
    with pytest.raises(SubmissionError, match="already exist.*nothing was written"):
        experiment.score_run(ae_run, factory, MACHINE, progress=False)
    with pytest.raises(ModelError, match="trained on 'valve', not 'fan'"):
        experiment.score_run(ae_run, factory, "fan", progress=False)
    assert snapshot(ae_run) == before


def test_overwrite_retrains_and_drops_the_old_files(ae_run, factory, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(ae_run, out)
    config = ae_config(factory, seed=1)
    experiment.train_run(
        factory, MACHINE, out, model="ae", config=config, quick=True, overwrite=True, progress=False
    )
    assert experiment.read_run_info(out).seed == 1
    assert experiment.has_detector(out) and not experiment.is_finished(out, MACHINE)


def test_model_and_config_must_agree(factory, tmp_path):
    with pytest.raises(ParameterError, match="model 'cflow' was asked for with a AEConfig"):
        experiment.train_run(
            factory, MACHINE, tmp_path, model="cflow", config=AEConfig(), progress=False
        )


@pytest.mark.parametrize("make", [False, True], ids=["missing", "empty"])
def test_load_detector_names_the_folder(tmp_path, make):
    folder = tmp_path / "nothing-here"
    if make:
        folder.mkdir()
    with pytest.raises(ModelError, match="nothing-here .*cflow.pt or autoencoder.pt"):
        experiment.load_detector(folder)


@pytest.mark.slow
def test_interrupted_cflow_training_resumes(factory, tmp_path, monkeypatch):
    config = experiment.run_config(
        "cflow", factory, MACHINE, quick=True, epochs=2, changes=TINY_CFLOW
    )
    out = tmp_path / "run"
    fit = CFlowDetector.fit
    epochs_seen: list[int] = []

    def stop_after_first(self, data, *, checkpoint=None, callback=None):
        def stop(epoch, loss):
            epochs_seen.append(epoch)
            raise KeyboardInterrupt

        return fit(self, data, checkpoint=checkpoint, callback=stop)

    monkeypatch.setattr(CFlowDetector, "fit", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        experiment.train_run(factory, MACHINE, out, config=config, quick=True, progress=False)
    assert epochs_seen == [1]
    assert (out / experiment.CHECKPOINT_FILE).is_file() and not experiment.has_detector(out)

    # Other settings into the same folder: refused, the checkpoint is kept.
    other = dataclasses.replace(config, seed=5)
    with pytest.raises(ModelError, match="interrupted training with other settings"):
        experiment.train_run(factory, MACHINE, out, config=other, quick=True, progress=False)
    assert (out / experiment.CHECKPOINT_FILE).is_file()

    def record(self, data, *, checkpoint=None, callback=None):
        return fit(self, data, checkpoint=checkpoint, callback=lambda e, _: epochs_seen.append(e))

    monkeypatch.setattr(CFlowDetector, "fit", record)
    detector = experiment.train_run(
        factory, MACHINE, out, config=config, quick=True, progress=False
    )
    assert epochs_seen == [1, 2]  # the second call ran epoch 2 only
    assert len(detector.losses_) == 2
    assert experiment.read_run_info(out).resumed is True
    assert not (out / experiment.CHECKPOINT_FILE).exists()


# ---------------------------------------------------------------- ground truth and results


def test_ground_truth_sources_agree(factory, tmp_path):
    clips = data.scan(factory, machines=MACHINE, split="test")
    from_names = experiment.ground_truth(MACHINE, root=factory)
    assert from_names == evaluation.truth_from_clips(clips)
    assert sum(t.label for t in from_names) == 20

    single = evaluation.write_ground_truth(tmp_path / "gt.csv", from_names)
    assert experiment.ground_truth(MACHINE, path=single) == from_names
    name = f"ground_truth_{MACHINE}_section_00_test.csv"
    evaluation.write_ground_truth(tmp_path / "ours" / name, from_names)
    assert experiment.ground_truth(MACHINE, path=tmp_path / "ours") == from_names

    official = tmp_path / "official"
    for folder, column in (("ground_truth_data", "label"), ("ground_truth_domain", "domain")):
        (official / folder).mkdir(parents=True)
        rows = [
            f"{t.file_name},{t.label if column == 'label' else int(t.domain == 'target')}"
            for t in from_names
        ]
        (official / folder / name).write_text("\n".join(rows) + "\n")
    assert experiment.ground_truth(MACHINE, path=official) == from_names

    with pytest.raises(SubmissionError, match="either"):
        experiment.ground_truth(MACHINE)
    with pytest.raises(SubmissionError, match="either"):
        experiment.ground_truth(MACHINE, root=factory, path=single)
    with pytest.raises(SubmissionError, match="no ground truth of 'fan'"):
        experiment.ground_truth("fan", path=tmp_path / "ours")


def test_collect_results_names_and_seeds(ae_run, factory, tmp_path):
    (result,) = experiment.collect_results([ae_run], root=factory)
    assert (result.method, result.seed, result.machine) == ("Baseline", 0, MACHINE)

    plain = tmp_path / "submission"
    plain.mkdir()
    for name in (evaluation.score_file_name(MACHINE), evaluation.decision_file_name(MACHINE)):
        shutil.copy(ae_run / name, plain / name)
    (same,) = experiment.collect_results([plain], root=factory)
    assert (same.method, same.seed) == ("submission", None)
    assert same.metric("pAUC") == result.metric("pAUC")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SubmissionError, match="empty holds no anomaly_score"):
        experiment.collect_results([empty], root=factory)
    with pytest.raises(SubmissionError, match="does not exist"):
        experiment.collect_results([tmp_path / "nope"], root=factory)


def test_one_ground_truth_file_serves_one_machine_type(ae_run, factory, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in (evaluation.score_file_name(MACHINE), evaluation.decision_file_name(MACHINE)):
        text = (ae_run / name).read_text()
        (other / name.replace(MACHINE, "fan")).write_text(text)
    truth = experiment.ground_truth(MACHINE, root=factory)
    path = evaluation.write_ground_truth(tmp_path / "gt.csv", truth)
    with pytest.raises(SubmissionError, match="2 machine types"):
        experiment.collect_results([ae_run, other], ground_truth_path=path)


def test_summary_titles_quick_runs_and_refuses_to_overwrite(ae_run, factory, tmp_path):
    summary = experiment.evaluate_runs([ae_run], root=factory)
    text = summary.to_text()
    assert text.splitlines()[0] == experiment.QUICK_TITLE
    assert "| valve | AUC (source) |" in text
    csv_path, md_path = summary.write(tmp_path)
    assert csv_path.read_text() == summary.table.to_csv()
    assert md_path.read_text().startswith(experiment.QUICK_TITLE)
    before = snapshot(tmp_path)
    with pytest.raises(SubmissionError, match="results.csv.*already exist"):
        summary.write(tmp_path)
    assert snapshot(tmp_path) == before


def test_hardware_names_the_processor():
    text = experiment.hardware("cpu")
    assert text.startswith("CPU ") and text.endswith(" cores)")


# ---------------------------------------------------------------- the book's shared cache


def test_trained_detector_trains_once_then_reuses(factory):
    mode = Mode("quick", "tests", "cpu")
    config = AEConfig.quick(**TINY_AE)
    first = experiment.trained_detector(
        factory, MACHINE, model="ae", mode=mode, seed=2, config=config, progress=False
    )
    folder = experiment.run_dir(experiment_cache() / "runs" / "quick", "ae", MACHINE, 2)
    assert experiment.read_run_info(folder).seed == first.config.seed == 2
    before = snapshot(folder)

    again = experiment.trained_detector(
        factory, MACHINE, model="ae", mode=mode, seed=2, config=config, progress=False
    )
    assert snapshot(folder) == before  # loaded, not retrained
    assert np.array_equal(again.train_scores_["mse"], first.train_scores_["mse"])

    changed = experiment.trained_detector(
        factory,
        MACHINE,
        model="ae",
        mode=mode,
        seed=2,
        config=AEConfig.quick(epochs=2),
        progress=False,
    )
    assert len(changed.losses_) == 2
    assert experiment.read_run_info(folder).config["epochs"] == 2


def test_trained_detector_retrains_a_damaged_cache_entry(factory):
    mode = Mode("quick", "tests", "cpu")
    config = AEConfig.quick(**TINY_AE)
    first = experiment.trained_detector(
        factory, MACHINE, model="ae", mode=mode, seed=4, config=config, progress=False
    )
    folder = experiment.run_dir(experiment_cache() / "runs" / "quick", "ae", MACHINE, 4)
    path = folder / experiment.DETECTOR_FILES["ae"]
    damaged = bytearray(path.read_bytes())
    middle = len(damaged) // 2
    damaged[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(damaged))
    with pytest.raises(ModelError):
        experiment.load_detector(folder)
    again = experiment.trained_detector(
        factory, MACHINE, model="ae", mode=mode, seed=4, config=config, progress=False
    )
    assert np.array_equal(again.train_scores_["mse"], first.train_scores_["mse"])
    experiment.load_detector(folder)  # a good file again


def test_trained_detector_variants_keep_the_default(factory):
    mode = Mode("quick", "tests", "cpu")
    config = AEConfig.quick(**TINY_AE)
    experiment.trained_detector(
        factory, MACHINE, model="ae", mode=mode, seed=3, config=config, progress=False
    )
    default = experiment.run_dir(experiment_cache() / "runs" / "quick", "ae", MACHINE, 3)
    before = snapshot(default)
    variant = experiment.trained_detector(
        factory,
        MACHINE,
        model="ae",
        mode=mode,
        seed=3,
        config=AEConfig.quick(epochs=2),
        variant="short",
        progress=False,
    )
    assert len(variant.losses_) == 2
    folder = experiment.run_dir(experiment_cache() / "runs" / "quick", "ae-short", MACHINE, 3)
    assert experiment.read_run_info(folder).config["epochs"] == 2
    assert snapshot(default) == before  # the default detector is untouched
    with pytest.raises(AsdflowError, match="variant"):
        experiment.trained_detector(
            factory, MACHINE, model="ae", mode=mode, config=config, variant="../x", progress=False
        )


def experiment_cache() -> Path:
    from asdflow.modes import cache_dir

    return cache_dir()


def test_run_info_round_trip(ae_run, tmp_path):
    info = experiment.read_run_info(ae_run)
    assert experiment.RunInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    assert experiment.read_run_info(tmp_path) is None
    (tmp_path / experiment.RUN_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="not a readable run record"):
        experiment.read_run_info(tmp_path)
