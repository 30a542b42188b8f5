"""`csm_worker.device_check` (what scripts/gpu_check.sh runs on a GPU), run on CPU with the CUDA queries faked:
every figure lands in the JSON, ratios are computed from the figures, targets are judged. No timing asserts."""

from __future__ import annotations

import json

import torch

from csm_worker import device_check
from csm_worker.engine import memory


def fake_cuda(monkeypatch, gen, auto: int):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("empty_cache", "reset_peak_memory_stats", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 3 * 2**30)
    monkeypatch.setattr(device_check, "environment", lambda: {"gpu": "none (test)"})
    monkeypatch.setattr(device_check, "load_csm_1b", lambda device, model, dtype: gen)
    budget = memory.SlotBudget(auto, free=80 * 2**30, cache_per_slot=64 * 2**20, step_per_slot=16 * 2**20,
                               reserve=memory.RESERVE_BYTES)

    def max_batch_size():
        gen.slot_budget = budget
        return auto

    monkeypatch.setattr(gen, "max_batch_size", max_batch_size)
    monkeypatch.setattr(device_check.bench, "peak_flops_per_s", lambda *a, **k: 1e12)


def test_a_run_writes_every_figure_and_judges_the_targets(gen, tmp_path, monkeypatch):
    fake_cuda(monkeypatch, gen, auto=20)
    log = tmp_path / "tests.log"
    log.write_text("....\n7 passed, 1 skipped in 30.1s\n")
    out = tmp_path / "gpu.json"
    device_check.main([str(out), "--model", "random:tiny", "--frames", "4", "--hf-frames", "2", "--rounds", "1",
                       "--tests-log", str(log), "--tests-rc", "0"])
    r = json.loads(out.read_text())
    assert r["done"] and r["tests"]["passed"] == 7 and r["tests"]["skipped"] == 1 and r["tests"]["rc"] == 0
    assert r["batch_size_auto"]["chose"] == 20 and "20 slots" in r["batch_size_auto"]["why"]
    assert set(r["figures"]) >= {"1", "20"} and set(r["graphs_sweep"]) == {"16"}
    for row in (r["figures"]["1"], r["figures"]["20"]):
        fps = {m: row[m]["frames_per_s"] for m in device_check.MODES}
        assert all(v > 0 for v in fps.values()) and row["hf"]["frames_per_s"] > 0
        assert row["graphs_vs_static"] == fps["graphs"] / fps["static"]
        assert row["speedup_vs_hf"] == fps["graphs"] / row["hf"]["frames_per_s"]
        assert row["compute_efficiency"] == fps["graphs"] * r["peak"]["decode_flops_per_frame"] / 1e12
        assert row["graphs"]["capture_s"] == 0.0 and row["graphs"]["graphs_captured"] == 0  # no CUDA: eager
        assert row["graphs"]["peak_memory_gib"] == 3.0
    best = r["figures"][str(r["best_batch"])]
    assert r["targets"]["aggregate_realtime_factor"]["measured"] == best["graphs"]["realtime_factor"]
    assert r["targets"]["single_stream_realtime_factor"]["met"] is False  # tiny on CPU: far from 10x
    assert r["model"]["backend"] == "cpu"  # the fake hands over the CPU generator; on a GPU: portable


def test_test_summary_reads_pytests_last_line(tmp_path):
    log = tmp_path / "t.log"
    log.write_text("F..\n=== short test summary info ===\nFAILED x\n1 failed, 6 passed in 9.0s\n")
    assert device_check.test_summary(log, 1) == {"ran": True, "rc": 1, "summary": "1 failed, 6 passed in 9.0s",
                                                 "failed": 1, "passed": 6}
    assert device_check.test_summary(None, None) == {"ran": False}
