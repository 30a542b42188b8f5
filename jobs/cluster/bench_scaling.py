"""`csm-render bench-scaling`: how a job's throughput grows with its number of workers.

The same synthetic job (seeded random texts, every conversation alike in size) runs once per worker count into a
fresh OUT, on the Ray this process joins or starts. Throughput is audio seconds rendered per second of the render
phase (first worker ready to last worker done), so model loading and planning do not count; each count's figure
is also given as a ratio to the first count's.
"""

from __future__ import annotations

import random
import tempfile

from jobs.manifests.manifest import ConversationSpec, TurnSpec
from jobs.plan.order import Defaults
from jobs.runner import RunConfig, run_job

WORDS = ("the", "morning", "train", "was", "late", "again", "and", "we", "talked", "about", "coffee", "rain",
         "books", "music", "tomorrow", "quietly")


def synthetic_job(conversations: int, turns: int, seed: int = 0) -> list[ConversationSpec]:
    rng = random.Random(seed)
    return [ConversationSpec(f"bench-{c:05d}", [
        TurnSpec(f"bench-{c:05d}", t, t % 2, " ".join(rng.choice(WORDS) for _ in range(8)).capitalize() + ".")
        for t in range(turns)]) for c in range(conversations)]


def measure(model: str, workers: list[int], conversations: int, turns: int, max_audio_length_ms: int,
            device: str = "cpu", batch_size: int | str = "auto", gpus_per_worker: float | None = None,
            logical_gpus: int = 0, address: str | None = None) -> list[dict]:
    """`logical_gpus` > 0: start a local Ray with that many logical GPUs and give each worker one of them, so a
    worker is a fixed unit of compute (one core each on CPU) as a GPU worker would be. Else each count's job
    joins `address` as `run` does (a token-secured cluster included), or starts a local Ray."""
    import ray

    job = synthetic_job(conversations, turns)
    if logical_gpus:
        # A Ray of its own even where a stale /tmp/ray/ray_current_cluster names another (ray_pool.init_address).
        ray.init(address="local", num_gpus=logical_gpus, include_dashboard=False, logging_level="WARNING")
        gpus_per_worker = 1.0
    try:
        return _rows(model, workers, job, max_audio_length_ms, device, batch_size, gpus_per_worker, address)
    finally:
        if logical_gpus:
            ray.shutdown()


def _rows(model, workers, job, max_audio_length_ms, device, batch_size, gpus_per_worker, address) -> list[dict]:
    rows = []
    for count in workers:
        with tempfile.TemporaryDirectory(prefix="csm-render-bench-") as out:
            cfg = RunConfig(manifests=[], out=out, model=model, device=device, batch_size=batch_size,
                            workers=count, gpus_per_worker=gpus_per_worker, address=address,
                            defaults=Defaults(max_audio_length_ms=max_audio_length_ms, top_k=50))
            summary = run_job(cfg, job)
        if summary.failed:
            raise RuntimeError(f"{len(summary.failed)} conversations failed with {count} workers: "
                               f"{next(iter(summary.failed.values()))}")
        rate = summary.audio_seconds / summary.render_seconds if summary.render_seconds else 0.0
        rows.append({"workers": count, "turns": summary.turns_rendered, "audio_s": round(summary.audio_seconds, 2),
                     "render_s": round(summary.render_seconds, 2), "wall_s": round(summary.wall_seconds, 2),
                     "audio_s_per_s": round(rate, 3)})
    base = rows[0]["audio_s_per_s"] or 1.0
    for row in rows:
        row["ratio_vs_first"] = round(row["audio_s_per_s"] / base, 3)
    return rows
