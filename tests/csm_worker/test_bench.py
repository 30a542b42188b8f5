"""`csm_worker.bench`: how figures are combined (no timing asserts: the speeds themselves go in BENCHMARKS.md)."""

from __future__ import annotations

import itertools

import pytest
import torch

from csm_worker import bench


def test_each_figure_is_the_best_of_interleaved_rounds(gen, monkeypatch):
    order = []
    # Speeds that move from round to round, as on a shared machine; each call returns its next value.
    speeds = {
        ("eng", 1): iter([10.0, 30.0, 20.0]), ("eng", 8): iter([100.0, 50.0, 300.0]),
        ("hf", 1): iter([2.0, 1.0, 1.5]), ("hf", 8): iter([40.0, 60.0, 20.0]),
        ("portable", 8): iter([70.0, 90.0, 80.0]),
    }

    def fake(side):
        def measure(gen, batch, frames):
            if side == "eng" and gen.model.backend.name == "portable":
                return measure_as("portable", batch)
            return measure_as(side, batch)
        return measure

    def measure_as(side, batch):
        order.append((side, batch))
        return next(speeds[(side, batch)])

    peaks = itertools.cycle([1e9, 3e9])
    monkeypatch.setattr(bench, "engine_frames_per_s", fake("eng"))
    monkeypatch.setattr(bench, "hf_frames_per_s", fake("hf"))
    monkeypatch.setattr(bench, "peak_flops_per_s", lambda device, dtype: next(peaks))
    monkeypatch.setattr(bench, "turn_cost_ratio", lambda gen: 1.0)
    monkeypatch.setattr(bench, "gate_costs", lambda gen, batch, frames: (0.001, 0.5))
    r = bench.run_bench(gen, 8, frames=4, hf_frames=2, rounds=3)
    # Interleaved, not one side then the other; the portable backend measured in the same rounds.
    assert order == [("eng", 1), ("eng", 8), ("hf", 1), ("hf", 8), ("portable", 8)] * 3
    assert (r.engine_b1_frames_per_s, r.engine_frames_per_s, r.hf_b1_frames_per_s, r.hf_bN_frames_per_s) == \
        (30.0, 300.0, 2.0, 60.0)
    assert r.speedup_vs_hf_b1 == 150.0 and r.speedup_vs_hf_bN == 5.0 and r.rounds == 3  # engine at batch N
    assert r.peak_flops_per_s == 3e9
    assert r.compute_efficiency == 300.0 * r.decode_flops_per_frame / 3e9
    assert r.backend == "cpu" and r.portable_frames_per_s == 90.0
    assert r.portable_compute_efficiency == 90.0 * r.decode_flops_per_frame / 3e9
    # A job's additions as a share of the engine's time for the same audio: cost x its realtime factor.
    assert r.qc_checks_ratio == pytest.approx(0.001 * 300.0 * 0.08) and r.watermark_ratio == pytest.approx(12.0)


def test_gate_costs_time_the_checks_and_the_watermark_on_rendered_turns(gen):
    checks, marking = bench.gate_costs(gen, 2, 4)
    assert 0 < checks < marking  # the random preset's random watermark weights are there to time


def test_peak_is_a_positive_float32_matmul_rate():
    assert bench.peak_flops_per_s("cpu", torch.float32, n=256, repeats=1, trials=1) > 0
