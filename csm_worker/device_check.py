"""`python -m csm_worker.device_check OUT.json`: the GPU figures in one JSON, for scripts/gpu_check.sh.

On one CUDA device, `random:csm-1b` (the release's sizes, seeded random weights) in bf16: the engine at batch 1
and at `--batch-size auto`, each in three step modes (dynamic: sized from Python state each step; static: the
fixed-shape step run eagerly; graphs: its CUDA graphs), transformers' `generate` at the same batch sizes, a short
sweep of batch sizes with graphs, and the measured bf16 matmul peak. The JSON is rewritten after every figure,
so a run stopped by its time limit still leaves what it measured.

Every figure is the best of `--rounds` runs; ratios compare figures of this one run.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import time
from pathlib import Path

import torch

from . import bench
from .generator import load_csm_1b

MODES = ("dynamic", "static", "graphs")
SWEEP = (16, 64, 128, 256)  # batch sizes tried with graphs besides 1 and auto, below auto
TARGETS = {"aggregate_realtime_factor": 500.0, "single_stream_realtime_factor": 10.0, "compute_efficiency": 0.5}


class Report:
    """The JSON being built, written to its file after every change."""

    def __init__(self, path: Path):
        self.path, self.data = path, {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "done": False}

    def set(self, key: str, value) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


def environment() -> dict:
    props = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    return {"gpu": props.name, "sms": props.multi_processor_count, "memory_gib": round(total / 2**30, 1),
            "free_gib_before_load": round(free / 2**30, 1), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version()}


def test_summary(log: Path | None, rc: int | None) -> dict:
    """The device tests' outcome, from pytest's last summary line."""
    if log is None or not log.exists():
        return {"ran": False}
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", lines[-1] if lines else "")}
    return {"ran": True, "rc": rc, "summary": lines[-1] if lines else "", **counts}


def free_memory() -> None:
    # An engine's graphs and closures form reference cycles: collect them now, or the next engine's caches
    # (32 GiB at 512 slots) would meet the last one's still allocated.
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def measure_engine(gen, batch: int, frames: int, mode: str, rounds: int) -> dict:
    best, capture_s = 0.0, None
    for _ in range(rounds):
        free_memory()
        fps, engine = bench.engine_run(gen, batch, frames, mode=mode)
        best = max(best, fps)
        if mode == "graphs":
            runner = engine.static.run_fn
            capture_s = runner.capture_s if capture_s is None else capture_s  # first round: the cold capture
            graphs_captured = len(runner.graphs)
        del engine
    row = {"frames_per_s": best, "realtime_factor": best * bench.FRAME_S,
           "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}
    if mode == "graphs":
        row.update(capture_s=capture_s, graphs_captured=graphs_captured)
    return row


def measure_hf(gen, batch: int, frames: int) -> dict:
    free_memory()
    try:
        return {"frames_per_s": bench.hf_frames_per_s(gen, batch, frames)}
    except torch.cuda.OutOfMemoryError as e:
        return {"error": f"out of memory: {e}"}


def batch_figures(gen, batch: int, args, peak: float, per_frame: float) -> dict:
    row = {mode: measure_engine(gen, batch, args.frames, mode, args.rounds) for mode in MODES}
    row["hf"] = measure_hf(gen, batch, args.hf_frames)
    fps = lambda mode: row[mode]["frames_per_s"]
    row["graphs_vs_static"] = fps("graphs") / fps("static")
    row["graphs_vs_dynamic"] = fps("graphs") / fps("dynamic")
    if "frames_per_s" in row["hf"]:
        row["speedup_vs_hf"] = fps("graphs") / row["hf"]["frames_per_s"]
    row["compute_efficiency"] = fps("graphs") * per_frame / peak
    return row


def verdict(figures: dict, best_batch: int) -> dict:
    best, single = figures[str(best_batch)]["graphs"], figures["1"]["graphs"]
    got = {"aggregate_realtime_factor": best["realtime_factor"], "single_stream_realtime_factor":
           single["realtime_factor"], "compute_efficiency": figures[str(best_batch)]["compute_efficiency"]}
    return {k: {"target": TARGETS[k], "measured": v, "met": v >= TARGETS[k]} for k, v in got.items()}


def run(args) -> None:
    report = Report(Path(args.out))
    report.set("environment", environment())
    report.set("tests", test_summary(Path(args.tests_log) if args.tests_log else None, args.tests_rc))
    start = time.perf_counter()
    gen = load_csm_1b("cuda", args.model, "bfloat16")
    report.set("model", {"name": args.model, "dtype": "bfloat16", "backend": gen.model.backend.name,
                         "load_s": time.perf_counter() - start})
    auto = gen.max_batch_size()
    report.set("batch_size_auto", {"chose": auto, "why": gen.slot_budget.describe(),
                                   "cache_mib_per_slot": gen.slot_budget.cache_per_slot / 2**20,
                                   "step_mib_per_slot_estimate": gen.slot_budget.step_per_slot / 2**20})
    peak = bench.peak_flops_per_s("cuda", torch.bfloat16, repeats=10, trials=3)
    per_frame = bench.decode_flops_per_frame(gen)
    report.set("peak", {"bf16_matmul_flops_per_s": peak, "decode_flops_per_frame": per_frame})
    figures = {}
    for batch in dict.fromkeys((1, auto)):
        figures[str(batch)] = batch_figures(gen, batch, args, peak, per_frame)
        report.set("figures", figures)
    sweep = {}
    for batch in (b for b in SWEEP if b < auto):
        sweep[str(batch)] = measure_engine(gen, batch, args.frames, "graphs", 1)
        report.set("graphs_sweep", sweep)
    rates = {int(b): r["frames_per_s"] for b, r in sweep.items()} | {auto: figures[str(auto)]["graphs"]["frames_per_s"]}
    best_batch = max(rates, key=rates.get)
    if str(best_batch) not in figures:
        figures[str(best_batch)] = batch_figures(gen, best_batch, args, peak, per_frame)
        report.set("figures", figures)
    report.set("best_batch", best_batch)
    report.set("targets", verdict(figures, best_batch))
    report.set("wall_s", time.perf_counter() - start)
    report.set("done", True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="the JSON file to write")
    p.add_argument("--model", default="random:csm-1b")
    p.add_argument("--frames", type=int, default=40, help="frames per turn in each engine measurement")
    p.add_argument("--hf-frames", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--tests-log", help="the device tests' pytest output, summarised into the JSON")
    p.add_argument("--tests-rc", type=int)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("device_check needs a CUDA device: torch.cuda.is_available() is False")
    run(args)


if __name__ == "__main__":
    main()
