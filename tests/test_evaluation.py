"""Tests of asdflow.evaluation: DCASE 2024 metrics, thresholds, files and tables."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import f1_score, roc_auc_score

from asdflow.data import Clip
from asdflow.errors import AsdflowError, ModelError, ParameterError, SubmissionError
from asdflow.evaluation import (
    EPS,
    REPORT_TABLE1,
    Cell,
    MachineResult,
    Truth,
    auc,
    best_f1,
    decision_file_name,
    domain_auc,
    evaluate,
    evaluate_submission,
    gamma_threshold,
    harmonic_mean,
    official_score,
    pauc,
    precision_recall_f1,
    read_dcase_ground_truth,
    read_decisions,
    read_ground_truth,
    read_scores,
    result_table,
    score_file_name,
    truth_from_clips,
    write_decisions,
    write_ground_truth,
    write_scores,
    write_submission,
)
from asdflow.tolerance import tolerance


def close(expected: float, *, size: float = 1.0, terms: int = 1):
    """``pytest.approx`` with the float64 tolerance of :func:`asdflow.tolerance.tolerance`.

    The metrics are float64 sums and ratios of numbers of size ``size`` (AUCs
    and scores in [0, 1]); ``terms`` is how many of them a result adds up.
    """
    return pytest.approx(expected, rel=0, abs=tolerance("float64", size, terms=terms))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240)


def make_truth(n_per_group: int = 5) -> list[Truth]:
    """Normal and anomalous clips of both domains, DCASE names."""
    truth = []
    for domain in ("source", "target"):
        for label in ("normal", "anomaly"):
            for i in range(n_per_group):
                name = f"section_00_{domain}_test_{label}_{i:04d}_vel_{i}.wav"
                truth.append(Truth(name, int(label == "anomaly"), domain))
    return truth


# ---------------------------------------------------------------- metrics


def test_perfect_reversed_and_tied_detectors():
    y = np.array([0, 0, 0, 1, 1, 1])
    perfect = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert auc(y, perfect) == 1.0
    assert pauc(y, perfect) == 1.0
    assert auc(y, -perfect) == 0.0
    # Reversed: no true positive below FPR 0.1, raw partial area 0. McClish
    # standardisation 0.5 * (1 + (0 - 0.005) / (0.1 - 0.005)) = 9/19.
    assert pauc(y, -perfect) == close(9 / 19, terms=y.size)
    tied = np.full(6, 3.0)
    assert auc(y, tied) == 0.5
    assert pauc(y, tied) == close(0.5, terms=y.size)


def test_small_auc_by_hand():
    # Anomalies 0.35 and 0.8 against normals 0.1 and 0.4: 3 of 4 pairs ordered.
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # A tie between an anomaly and a normal counts one half: (1 + 0.5 + 1 + 1) / 4.
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.8]) == 0.875


def test_domain_auc_by_hand():
    y = [0, 0, 0, 0, 1, 1]
    domains = ["source", "source", "target", "target", "source", "target"]
    scores = [0.1, 0.5, 0.3, 0.9, 0.6, 0.4]
    # source: normals 0.1, 0.5 against anomalies 0.6, 0.4 -> 3 of 4 pairs.
    assert domain_auc(y, scores, domains, "source") == 0.75
    # target: normals 0.3, 0.9 against anomalies 0.6, 0.4 -> 2 of 4 pairs.
    assert domain_auc(y, scores, domains, "target") == 0.5


@pytest.mark.parametrize("new_score", [-100.0, 0.0, 0.55, 1e6])
def test_target_normal_never_enters_source_auc(new_score):
    truth = make_truth()
    rng = np.random.default_rng(0)
    scores = rng.normal(size=len(truth)) + np.array([t.label for t in truth])
    before = evaluate(truth, scores, machine="fan")
    changed = scores.copy()
    target_normals = [i for i, t in enumerate(truth) if t.domain == "target" and t.label == 0]
    changed[target_normals[0]] = new_score
    after = evaluate(truth, changed, machine="fan")
    assert after.auc_source == before.auc_source
    source_normals = [i for i, t in enumerate(truth) if t.domain == "source" and t.label == 0]
    changed = scores.copy()
    changed[source_normals[0]] = new_score
    assert evaluate(truth, changed, machine="fan").auc_target == before.auc_target


def test_anomalies_of_both_domains_enter_each_domain_auc():
    truth = make_truth()
    scores = np.array([float(t.label) for t in truth])  # perfect
    target_anomaly = next(i for i, t in enumerate(truth) if t.domain == "target" and t.label)
    scores[target_anomaly] = -1.0  # below every normal clip
    result = evaluate(truth, scores, machine="fan")
    # 10 anomalies x 5 source normals; the spoiled one loses its 5 pairs.
    assert result.auc_source == close(1 - 5 / 50, terms=50)  # 50 pairs
    assert result.auc_target == close(1 - 5 / 50, terms=50)


def test_pauc_matches_scikit_learn(rng):
    y = rng.integers(0, 2, size=200)
    scores = rng.normal(size=200) + 0.8 * y
    assert pauc(y, scores) == roc_auc_score(y, scores, max_fpr=0.1)
    assert pauc(y, scores, max_fpr=0.3) == roc_auc_score(y, scores, max_fpr=0.3)


def test_pauc_of_evaluate_uses_all_clips(rng):
    truth = make_truth(20)
    y = np.array([t.label for t in truth])
    scores = rng.normal(size=y.size) + y
    assert evaluate(truth, scores, machine="fan").pauc == roc_auc_score(y, scores, max_fpr=0.1)


def test_precision_recall_f1_by_hand():
    # tp = 1, fp = 1, fn = 1.
    assert precision_recall_f1([0, 0, 1, 1], [1, 0, 1, 0]) == (0.5, 0.5, 0.5)
    # tp = 2, fp = 1, fn = 0: P = 2/3, R = 1, F1 = 0.8.
    p, r, f = precision_recall_f1([0, 0, 1, 1], [1, 0, 1, 1])
    assert (p, r, f) == (close(2 / 3, terms=3), 1.0, close(0.8, terms=3))
    # Flagging nothing gives zeros, not NaN.
    assert precision_recall_f1([0, 1, 1], [0, 0, 0]) == (0.0, 0.0, 0.0)


def test_decision_metrics_are_per_domain():
    truth = make_truth(4)
    scores = np.arange(len(truth), dtype=float)
    decisions = np.array([t.label for t in truth])  # perfect everywhere
    base = evaluate(truth, scores, decisions, machine="fan")
    assert base.precision_source == base.recall_source == base.f1_source == 1.0
    # Flag every target normal: source values must not move.
    spoiled = decisions.copy()
    for i, t in enumerate(truth):
        if t.domain == "target" and t.label == 0:
            spoiled[i] = 1
    result = evaluate(truth, scores, spoiled, machine="fan")
    assert (result.precision_source, result.recall_source, result.f1_source) == (1.0, 1.0, 1.0)
    assert result.precision_target == 0.5  # 4 anomalies, 4 normals flagged
    assert result.recall_target == 1.0
    assert math.isnan(evaluate(truth, scores, machine="fan").f1_target)


def test_official_score_is_floored_harmonic_mean():
    results = [
        MachineResult("fan", 0.7, 0.6, 0.55),
        MachineResult("valve", 0.9, 0.4, 0.65),
    ]
    values = [0.7, 0.6, 0.55, 0.9, 0.4, 0.65]
    assert official_score(results) == close(
        scipy.stats.hmean(values), size=1 / min(values), terms=len(values)
    )
    with_zero = [*results, MachineResult("bearing", 0.0, 0.5, 0.5)]
    score = official_score(with_zero)
    assert 0 < score < 10 * EPS
    assert harmonic_mean([0.5, 0.5]) == 0.5


def test_metric_errors():
    with pytest.raises(SubmissionError, match="normal and anomalous"):
        auc([1, 1], [0.2, 0.3])
    with pytest.raises(SubmissionError, match="finite"):
        auc([0, 1], [0.2, float("nan")])
    with pytest.raises(SubmissionError, match="one score per clip"):
        auc([0, 1, 1], [0.2, 0.3])


# ---------------------------------------------------------------- gamma threshold


@pytest.mark.parametrize(
    ("shape", "loc", "scale"), [(2.0, 0.0, 1.0), (5.0, -3.0, 0.2), (1.5, 40.0, 8.0)]
)
def test_gamma_threshold_recovers_true_quantile(shape, loc, scale):
    rng = np.random.default_rng(7)
    samples = loc + rng.gamma(shape, scale, size=4000)
    true = scipy.stats.gamma.ppf(0.9, shape, loc=loc, scale=scale)
    spread = scipy.stats.gamma.std(shape, scale=scale)
    assert abs(gamma_threshold(samples) - true) < 0.1 * spread


def test_gamma_threshold_quantile_is_monotone(rng):
    samples = rng.gamma(3.0, 1.0, size=500)
    assert (
        gamma_threshold(samples, 0.5)
        < gamma_threshold(samples, 0.9)
        < gamma_threshold(samples, 0.99)
    )


@pytest.mark.parametrize("scores", [[2.5] * 7, [2.5], [-4.0, -4.0]])
def test_gamma_threshold_constant_scores(scores):
    assert gamma_threshold(scores) == scores[0]


def test_gamma_threshold_falls_back_when_fit_fails(monkeypatch, rng):
    def failing_fit(*args, **kwargs):
        raise scipy.stats.FitError("no convergence")

    monkeypatch.setattr(scipy.stats.gamma, "fit", failing_fit)
    samples = rng.normal(size=101)
    with pytest.warns(RuntimeWarning, match="empirical"):
        threshold = gamma_threshold(samples)
    assert threshold == np.quantile(samples, 0.9)


@pytest.mark.parametrize(
    ("scores", "quantile"), [([], 0.9), ([1.0, float("nan")], 0.9), ([1.0, 2.0], 1.0)]
)
def test_gamma_threshold_rejects_bad_input(scores, quantile):
    with pytest.raises(ModelError):
        gamma_threshold(scores, quantile)


# ---------------------------------------------------------------- files


def test_round_trip_equals_in_memory(tmp_path, rng):
    truth = make_truth(10)
    y = np.array([t.label for t in truth])
    scores = rng.normal(size=y.size) * 1e-3 + y * 1e-3 + 1 / 3
    decisions = (scores > np.median(scores)).astype(int)
    names = [t.file_name for t in truth]
    # Write in another order: rows are matched by name, not by position.
    order = rng.permutation(len(names))
    write_submission(tmp_path, "fan", [names[i] for i in order], scores[order], decisions[order])
    in_memory = evaluate(truth, scores, decisions, machine="fan", method="AE", seed=1)
    from_files = evaluate_submission(tmp_path, "fan", truth, method="AE", seed=1)
    assert from_files == in_memory
    assert read_scores(tmp_path / score_file_name("fan")) == dict(
        zip([names[i] for i in order], scores[order].tolist(), strict=True)
    )


def test_file_format(tmp_path):
    path = write_scores(tmp_path / "s.csv", ["a.wav", "b.wav"], [0.5, 2.0])
    assert path.read_bytes() == b"a.wav,0.5\nb.wav,2.0\n"
    path = write_decisions(tmp_path / "d.csv", ["a.wav", "b.wav"], np.array([1, 0]))
    assert path.read_bytes() == b"a.wav,1\nb.wav,0\n"
    assert score_file_name("ToyCar") == "anomaly_score_ToyCar_section_00_test.csv"
    assert decision_file_name("fan") == "decision_result_fan_section_00_test.csv"


BAD_SCORE_FILES = {
    "missing": ("a.wav,0.1\n", "missing"),
    "extra": ("a.wav,0.1\nb.wav,0.2\nc.wav,0.3\n", "not in the ground truth"),
    "duplicate": ("a.wav,0.1\nb.wav,0.2\na.wav,0.3\n", "twice"),
    "nan": ("a.wav,nan\nb.wav,0.2\n", "finite"),
    "inf": ("a.wav,0.1\nb.wav,-inf\n", "finite"),
    "text": ("a.wav,high\nb.wav,0.2\n", "not a number"),
    "fields": ("a.wav,0.1,3\nb.wav,0.2\n", "expected 2"),
}


@pytest.mark.parametrize("case", BAD_SCORE_FILES)
def test_bad_score_files(tmp_path, case):
    text, message = BAD_SCORE_FILES[case]
    path = tmp_path / "anomaly_score_fan_section_00_test.csv"
    path.write_text(text)
    with pytest.raises(SubmissionError, match=message) as info:
        read_scores(path, expected=["a.wav", "b.wav"])
    assert path.name in str(info.value)


@pytest.mark.parametrize("value", ["2", "0.5", "-1", "yes", "nan"])
def test_bad_decisions(tmp_path, value):
    path = tmp_path / "decision_result_fan_section_00_test.csv"
    path.write_text(f"a.wav,1\nb.wav,{value}\n")
    with pytest.raises(SubmissionError, match="0 or 1") as info:
        read_decisions(path)
    assert path.name in str(info.value) and "b.wav" in str(info.value)


def test_decisions_accept_float_spelling(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a.wav,1.0\r\nb.wav,0\r\n\n")
    assert read_decisions(path) == {"a.wav": 1, "b.wav": 0}


def test_missing_file_is_a_submission_error(tmp_path):
    with pytest.raises(SubmissionError, match="not found"):
        evaluate_submission(tmp_path, "fan", make_truth(2))


def test_refuses_to_overwrite(tmp_path):
    path = write_scores(tmp_path / "s.csv", ["a.wav"], [1.0])
    with pytest.raises(SubmissionError, match="overwrite=True"):
        write_scores(path, ["a.wav"], [2.0])
    assert read_scores(path) == {"a.wav": 1.0}
    write_scores(path, ["a.wav"], [2.0], overwrite=True)
    assert read_scores(path) == {"a.wav": 2.0}
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]  # no temporary left


def test_submission_checks_both_files_before_writing(tmp_path):
    (tmp_path / decision_file_name("fan")).write_text("old\n")
    with pytest.raises(SubmissionError, match="nothing was written"):
        write_submission(tmp_path, "fan", ["a.wav", "b.wav"], [0.1, 0.2], [0, 1])
    assert not (tmp_path / score_file_name("fan")).exists()
    assert (tmp_path / decision_file_name("fan")).read_text() == "old\n"


@pytest.mark.parametrize(
    ("names", "scores", "message"),
    [
        (["a.wav", "a.wav"], [0.1, 0.2], "duplicate"),
        (["a.wav", "b.wav"], [0.1, float("nan")], "NaN"),
        (["a.wav", "b.wav"], [0.1], "2 file names but 1"),
        (["a,b.wav"], [0.1], "plain .wav"),
        (["dir/a.wav"], [0.1], "plain .wav"),
    ],
)
def test_write_validates(tmp_path, names, scores, message):
    with pytest.raises(SubmissionError, match=message):
        write_scores(tmp_path / "s.csv", names, scores)
    assert not (tmp_path / "s.csv").exists()


# ---------------------------------------------------------------- ground truth


def test_truth_from_clips():
    clips = [
        Clip(
            Path("test/section_00_source_test_normal_0001_a.wav"),
            "fan",
            "00",
            "source",
            "test",
            "normal",
            1,
        ),
        Clip(
            Path("test/section_00_target_test_anomaly_0002_a.wav"),
            "fan",
            "00",
            "target",
            "test",
            "anomaly",
            2,
        ),
    ]
    assert truth_from_clips(clips) == [
        Truth("section_00_source_test_normal_0001_a.wav", 0, "source"),
        Truth("section_00_target_test_anomaly_0002_a.wav", 1, "target"),
    ]
    unknown = Clip(
        Path("test/section_00_0001.wav"),
        "fan",
        "00",
        "unknown",
        "test",
        "unknown",
        1,
        dataset="eval",
    )
    with pytest.raises(SubmissionError, match="ground-truth file"):
        truth_from_clips([unknown])


def test_ground_truth_csv_round_trip(tmp_path):
    truth = make_truth(3)
    path = write_ground_truth(tmp_path / "truth.csv", truth)
    assert path.read_text().splitlines()[0] == "file_name,label,domain"
    assert read_ground_truth(path) == truth
    path.write_text("file_name,label,domain\nx.wav,2,source\n")
    with pytest.raises(SubmissionError, match="line 2"):
        read_ground_truth(path)
    path.write_text("x.wav,1,source\n")
    with pytest.raises(SubmissionError, match="header"):
        read_ground_truth(path)


def test_official_ground_truth_files(tmp_path):
    labels = tmp_path / "labels.csv"
    domains = tmp_path / "domains.csv"
    labels.write_text("section_00_0001.wav,1\nsection_00_0002.wav,0\n")
    domains.write_text("section_00_0002.wav,0\nsection_00_0001.wav,1\n")
    assert read_dcase_ground_truth(labels, domains) == [
        Truth("section_00_0001.wav", 1, "target"),
        Truth("section_00_0002.wav", 0, "source"),
    ]
    domains.write_text("section_00_0001.wav,1\n")
    with pytest.raises(SubmissionError, match="missing"):
        read_dcase_ground_truth(labels, domains)


# ---------------------------------------------------------------- tables


def test_report_table1_constant():
    assert len(REPORT_TABLE1) == 7 * 2 * 2
    assert REPORT_TABLE1[("ToyCar", "AUC (target)", "Baseline (report)")] == Cell(0.3375)
    assert REPORT_TABLE1[("valve", "AUC (source)", "CFlow (report)")] == Cell(0.7205, 0.0612, 3)


def make_runs() -> list[MachineResult]:
    rng = np.random.default_rng(3)
    runs = []
    for seed in range(3):
        for machine in ("fan", "valve"):
            a, b, c = rng.uniform(0.4, 0.9, size=3)
            runs.append(MachineResult(machine, a, b, c, method="CFlow", seed=seed))
            runs.append(MachineResult(machine, a - 0.1, b - 0.1, c - 0.1, method="AE", seed=seed))
    return runs


def test_result_table_cells_and_summaries():
    runs = make_runs()
    table = result_table(runs, reference=REPORT_TABLE1)
    assert table.methods == ("Baseline (report)", "CFlow (report)", "CFlow", "AE")
    fan = [r.auc_source for r in runs if r.method == "CFlow" and r.machine == "fan"]
    cell = table.cell("fan", "AUC (source)", "CFlow")
    assert cell.mean == close(np.mean(fan), terms=len(fan))
    assert cell.sd == close(np.std(fan, ddof=1), terms=2 * len(fan))
    assert cell.n == 3
    per_seed = [
        official_score([r for r in runs if r.method == "AE" and r.seed == s]) for s in range(3)
    ]
    # harmonic means of values down to `lowest`: sums of reciprocals up to 1 / lowest
    lowest = min(min(r.auc_source, r.auc_target, r.pauc) for r in runs if r.method == "AE")
    assert table.cell("official score", "", "AE").mean == close(
        np.mean(per_seed), size=1 / lowest, terms=len(runs)
    )
    hmeans = [
        scipy.stats.hmean([r.pauc for r in runs if r.method == "AE" and r.seed == s])
        for s in range(3)
    ]
    assert table.cell("harmonic mean", "pAUC", "AE").mean == close(
        np.mean(hmeans), size=1 / lowest, terms=len(runs)
    )
    # The report's columns: shown machines only, no pAUC, means over fan and valve.
    assert table.cell("fan", "pAUC", "CFlow (report)") is None
    assert table.cell("arithmetic mean", "AUC (source)", "Baseline (report)").mean == close(
        (0.6771 + 0.5107) / 2
    )
    assert table.cell("official score", "", "Baseline (report)") is None
    assert table.rows[:3] == (("fan", "AUC (source)"), ("fan", "AUC (target)"), ("fan", "pAUC"))


def test_result_table_renderings():
    table = result_table(make_runs(), reference=REPORT_TABLE1, machines=["valve", "fan"])
    markdown = table.to_markdown()
    assert "| valve | AUC (source) | 51.07 | 72.05 ± 6.12 |" in markdown
    assert markdown.count("\n") == 2 + len(table.rows)
    rows = list(csv.reader(io.StringIO(table.to_csv())))
    assert rows[0][:4] == ["machine", "metric", "Baseline (report)", "Baseline (report) sd"]
    by_key = {(r[0], r[1]): r for r in rows[1:]}
    column = rows[0].index("AE")
    assert float(by_key[("fan", "pAUC")][column]) == table.cell("fan", "pAUC", "AE").mean
    assert by_key[("fan", "pAUC")][2] == ""


def test_result_table_rejects_duplicate_runs():
    run = MachineResult("fan", 0.5, 0.5, 0.5, method="AE", seed=0)
    with pytest.raises(AsdflowError, match="give each run once"):
        result_table([run, run])


def test_single_run_has_no_sd():
    table = result_table([MachineResult("fan", 0.6, 0.7, 0.55, method="AE")])
    assert table.cell("fan", "AUC (target)", "AE") == Cell(0.7, None, 1)
    assert table.cell("official score", "", "AE").mean == close(
        scipy.stats.hmean([0.6, 0.7, 0.55]), size=1 / 0.55, terms=3
    )


def test_best_f1_is_the_best_threshold_within_the_false_alarm_budget():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 30)
    scores = np.round(rng.normal(size=60) + y, 1)  # ties on purpose
    for budget in (0.0, 0.1, 0.3, 1.0):
        f1, false_alarm = best_f1(y, scores, max_false_alarm=budget)
        assert false_alarm <= budget
        # Independent check: every cut of the sorted scores, by scikit-learn's F1.
        allowed = [
            f1_score(y, (scores >= t).astype(int))
            for t in np.concatenate([np.unique(scores), [np.inf]])
            if np.mean(scores[y == 0] >= t) <= budget
        ]
        assert f1 == pytest.approx(max(allowed), abs=1e-12)
    # A larger budget never lowers the best F1; with no budget, flagging everything is allowed.
    f1s = [best_f1(y, scores, max_false_alarm=b)[0] for b in (0.0, 0.1, 0.3, 1.0)]
    assert f1s == sorted(f1s)
    assert f1s[-1] >= precision_recall_f1(y, np.ones(60, int))[2]


def test_best_f1_of_a_perfect_and_of_a_reversed_ranking():
    y = np.repeat([0, 1], 5)
    assert best_f1(y, y.astype(float), max_false_alarm=0.0) == (1.0, 0.0)
    # Reversed: within a 30 % budget a threshold catches no anomaly, so F1 stays 0.
    assert best_f1(y, -y.astype(float), max_false_alarm=0.3) == (0.0, 0.0)
    with pytest.raises(SubmissionError, match="normal and anomalous"):
        best_f1([0, 0], [0.1, 0.2])
    with pytest.raises(ParameterError, match="max_false_alarm"):
        best_f1(y, y, max_false_alarm=1.5)
