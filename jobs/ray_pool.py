"""Starting the Ray workers: one actor per GPU (or `--workers N`), CPU actors when there is no GPU."""

from __future__ import annotations

import ray

from .worker import RenderWorker


def plan_workers(cfg, num_items: int) -> tuple[int, dict]:
    """How many workers, and the Ray resources each asks for. `--device cuda` asks for GPU workers even when the
    cluster has no GPU node yet: an autoscaling cluster (KubeRay, the cluster launcher) adds the nodes the
    pending actors ask for."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and gpus > 0)
    if use_gpu:
        count = cfg.workers or max(gpus, 1)
        resources = {"num_gpus": 1, "num_cpus": 1}
    else:
        count = cfg.workers or 1
        resources = {"num_gpus": 0, "num_cpus": 1}
    return max(1, min(count, num_items)), resources


def start_workers(cfg, num_items: int) -> list:
    count, resources = plan_workers(cfg, num_items)
    device = "cuda" if resources["num_gpus"] else "cpu"
    actor = ray.remote(**resources)(RenderWorker)
    return [
        actor.remote(cfg.model, cfg.out, device=device, dtype=cfg.dtype, batch_size=cfg.batch_size,
                     audio_format=cfg.audio_format, defaults=cfg.defaults,
                     s3_endpoint_url=cfg.s3_endpoint_url)
        for _ in range(count)
    ]
