"""The full-mode time budget of the chapters: counts, the cost model, and the limit it must keep."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from asdflow import budget, modes

ROOT = Path(__file__).resolve().parents[1]
# Twice the CPU times of a 2-core development machine: a slow Colab CPU.
SLOW_CPU = budget.CPUTimes(feature_image=0.12, log_mel=0.006, toy_flow_step=0.01)


def test_counting_a_linear_layer_gives_its_flops():
    layer = torch.nn.Linear(64, 32).to("meta")
    x = torch.zeros((16, 64), device="meta", requires_grad=True)

    def step() -> None:
        layer(x).sum().backward()

    cost = budget._count(step)
    # forward 2*B*I*O; backward: the input's and the weight's gradients, 2*B*I*O each
    assert cost.flops == 3 * 2 * 16 * 64 * 32
    assert cost.operations > 3


def test_a_step_takes_the_slower_of_computing_and_launching():
    gpu = budget.Hardware("test", tflops=1.0, launch_seconds=1e-5, download_mb_per_s=1.0)
    assert budget.StepCost(flops=2e9, operations=10).seconds(gpu) == pytest.approx(2e-3)
    assert budget.StepCost(flops=1e3, operations=1000).seconds(gpu) == pytest.approx(1e-2)


def test_the_decoders_cost_grows_with_their_width():
    costs = budget.cflow_step_costs((256, 512))
    # the sub-networks' matrices grow with the square of the width, their conditioning input does not
    assert 2.0 < costs[1].flops / costs[0].flops < 4.0
    assert costs[0].operations == costs[1].operations


def test_every_chapter_is_budgeted_and_keeps_the_limit():
    chapters = [
        Path(entry["file"]).name
        for entry in yaml.safe_load((ROOT / "_toc.yml").read_text())["chapters"]
    ]
    estimates = budget.chapter_budget(cpu=SLOW_CPU)
    names = [e.chapter for e in estimates]
    assert names == ["00_introduction", *chapters]
    for e in estimates:
        assert e.total <= budget.CHAPTER_LIMIT_MINUTES, (e.chapter, e.minutes)
        assert 0 <= e.cached_minutes <= e.total + 1e-9
    slowest = max(estimates, key=lambda e: e.total)
    assert slowest.total > 0.25 * budget.CHAPTER_LIMIT_MINUTES, (
        "the estimate lost its training cost"
    )


def test_training_time_is_proportional_to_the_epochs():
    short = {e.chapter: e for e in budget.chapter_budget(epochs=5, cpu=SLOW_CPU)}
    long = {e.chapter: e for e in budget.chapter_budget(epochs=25, cpu=SLOW_CPU)}
    cflow_only = "05_training"
    assert long[cflow_only].minutes["training"] == pytest.approx(
        5 * short[cflow_only].minutes["training"], rel=1e-9
    )
    assert long["08_where_is_the_anomaly"].total > budget.CHAPTER_LIMIT_MINUTES, (
        "the report's 25 epochs in every chapter would not fit a session"
    )


def test_download_size_of_a_machine_type():
    assert budget.download_bytes(1200) == 1200 * (44 + 2 * 160000)


def test_the_table_lists_every_chapter():
    estimates = budget.chapter_budget(cpu=SLOW_CPU)
    table = budget.budget_table(estimates)
    assert table.count("\n") == len(estimates) + 1
    assert all(e.chapter in table for e in estimates)
    assert modes.BOOK_EPOCHS
