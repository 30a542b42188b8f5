"""The Ray side of a job: the work queue actor, one render actor per GPU (or `--workers N`), and their metrics.

Everything Ray-specific lives here; RenderWorker and Feeder are plain Python and know nothing of Ray.
"""

from __future__ import annotations

import itertools
import os

import ray
from ray.util.metrics import Counter, Gauge
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from jobs.cluster import auth
from jobs.cluster.feeder import Feeder
from jobs.cluster.worker import RenderWorker

_ids = itertools.count()


def init_address(address: str | None) -> str:
    """What to pass ray.init: the address given, else RAY_ADDRESS (set inside a Ray Job), else "local", a Ray of
    this process's own. Ray's own default (None) joins the cluster last named in /tmp/ray/ray_current_cluster,
    which a killed `ray start` or test cluster leaves behind naming a dead address: ray.init then retries that
    address for minutes instead of starting a Ray."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def check_cluster_access(address: str | None) -> None:
    """Before joining an existing cluster: when it has Ray token authentication on, make sure this process has a
    token it takes and sends it (RAY_AUTH_MODE=token), or raise ClusterAuthError at once (jobs/cluster/auth.py).
    A Ray of this process's own ("local") keeps the token mode Ray gives a new local cluster, said explicitly so
    Ray does not warn about it to a user who never asked for a cluster; Ray Client addresses (ray://) are left
    to Ray."""
    address = init_address(address)
    if address == "local":
        if auth.MODE_ENV not in os.environ:
            auth.use_token_mode()  # Ray's own default for a new local Ray, without its warning
        return
    if "://" in address:
        return
    gcs = _gcs_address(address)
    where = f"the Ray cluster at {gcs if address == 'auto' else address}"  # as the user wrote it
    if gcs is not None and auth.check_access(where, auth.gcs_probe(gcs)) is not None:
        if os.environ.get(auth.MODE_ENV) != "token":
            auth.use_token_mode()


def _gcs_address(address: str) -> str | None:
    """host:port of the GCS that ray.init(address) would join ("auto": the cluster started on this machine, or
    RAY_ADDRESS); None when there is none to ask, and ray.init then says so itself."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        return canonicalize_bootstrap_address(address)
    except Exception:  # no cluster found, or several: ray.init reports it in its own words
        return None


def connect(address: str | None, **init_kwargs) -> None:
    """ray.init for a job: the address as init_address resolves it, a token-secured cluster checked first. A
    refusal for the token (a bad RAY_AUTH_TOKEN_PATH, say, for a local Ray too) is one ClusterAuthError line."""
    check_cluster_access(address)
    try:
        ray.init(address=init_address(address), **init_kwargs)
    except Exception as e:
        if auth.is_auth_failure(e):
            raise auth.from_ray_error("Ray refused to start or join a cluster", e) from None
        raise


def plan_workers(cfg, num_items: int) -> tuple[int, dict]:
    """How many workers, and the Ray resources each asks for.

    GPUs are asked for when the cluster has any, or with `--device cuda` even when it has none yet: an autoscaling
    cluster (KubeRay, the cluster launcher) adds the nodes pending actors ask for. `--gpus-per-worker` below 1
    packs several workers on one GPU. `--device` only says where the model runs, so tests can schedule on
    logical GPUs while computing on the CPU."""
    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=1)
    return worker_plan(cfg, ray.cluster_resources(), num_items, largest_node_cpus=largest)


def worker_plan(cfg, cluster: dict, num_items: int, largest_node_cpus: float | None = None) -> tuple[int, dict]:
    """plan_workers for a cluster with these total resources (Ray's cluster_resources()); a CPU worker never
    asks for more CPUs than its largest node has, or it could never be placed."""
    gpus = cluster.get("GPU", 0)
    per = cfg.gpus_per_worker
    if per is None:
        per = 1.0 if cfg.device == "cuda" or (cfg.device == "auto" and gpus > 0) else 0.0
    if per > 0:
        count = max(1, min(cfg.workers or max(int(gpus / per + 1e-9), 1), num_items))
        return count, {"num_gpus": per, "num_cpus": 1}
    # CPU workers share the cluster's cores: Ray gives each worker's torch as many threads as the CPUs it asks
    # for (OMP_NUM_THREADS), so one worker alone gets them all rather than one core.
    count = max(1, min(cfg.workers or 1, num_items))
    share = cluster.get("CPU", 1) // count
    if largest_node_cpus is not None:
        share = min(share, largest_node_cpus)
    return count, {"num_gpus": 0.0, "num_cpus": max(1, int(share))}


def worker_device(cfg, resources: dict) -> str:
    if cfg.device != "auto":
        return cfg.device
    return "cuda" if resources["num_gpus"] else "cpu"


def start_feeder(max_attempts: int):
    # On the driver's own node: the queue must live as long as the driver, and a worker node may be preempted.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(RayFeeder).options(scheduling_strategy=here).remote(max_attempts)


def start_worker(cfg, resources: dict, feeder) -> tuple[str, object, object]:
    """A new render actor and its event stream: (worker id, actor, stream). The stream's first event says the
    model is loaded; it fails when the actor dies."""
    worker_id = f"w{next(_ids)}"
    actor = ray.remote(max_restarts=0, **resources)(RayRenderWorker).options(
        scheduling_strategy="SPREAD").remote(
        cfg.model, cfg.out, device=worker_device(cfg, resources), dtype=cfg.dtype, batch_size=cfg.batch_size,
        audio_format=cfg.audio_format, defaults=cfg.defaults, s3_endpoint_url=cfg.s3_endpoint_url,
        cast=cfg.cast, backend=cfg.backend, qc=cfg.qc, watermark=cfg.watermark,
        rerender=cfg.rerender)
    stream = actor.render.options(num_returns="streaming").remote(feeder, worker_id)
    return worker_id, actor, stream


class RayFeed:
    """A worker's view of the queue actor."""

    def __init__(self, feeder, worker_id: str):
        self.feeder, self.worker_id = feeder, worker_id

    def take(self):
        return ray.get(self.feeder.take.remote(self.worker_id))

    def holds(self, conversation_id: str) -> bool:
        return ray.get(self.feeder.holds.remote(self.worker_id, conversation_id))

    def finish(self, conversation_id: str) -> None:
        # No need to wait: calls from one caller reach an actor in order, so the next take sees it.
        self.feeder.finish.remote(self.worker_id, conversation_id)


class RayRenderWorker(RenderWorker):
    """RenderWorker fed by the queue actor, counting what it renders in Ray's metrics (Ray dashboard)."""

    def render(self, feeder, worker_id: str):
        metrics = _worker_metrics()
        tags = {"worker": worker_id}
        for event in super().render(RayFeed(feeder, worker_id)):
            if event["event"] == "ready":
                event["node"] = ray.get_runtime_context().get_node_id()
            elif event["event"] == "turn":
                metrics["turns"].inc(1, tags)
                metrics["frames"].inc(event["num_frames"], tags)
                metrics["audio"].inc(event["duration_s"], tags)
            elif event["event"] == "done":
                metrics["conversations"].inc(1, tags)
                if event["error"]:
                    metrics["failures"].inc(1, tags)
            yield event


class RayFeeder(Feeder):
    """Feeder publishing its queue depth and leases as Ray gauges."""

    def __init__(self, max_attempts: int = 3):
        super().__init__(max_attempts)
        self._depth = Gauge("csm_render_queue_depth", "Conversations waiting for a worker.")
        self._leased = Gauge("csm_render_conversations_in_flight", "Conversations being rendered.")

    def take(self, worker: str):
        got = super().take(worker)
        self._publish()
        return got

    def put(self, items: list) -> None:
        super().put(items)
        self._publish()

    def finish(self, worker: str, conversation_id: str) -> None:
        super().finish(worker, conversation_id)
        self._publish()

    def worker_lost(self, worker: str):
        exhausted = super().worker_lost(worker)
        self._publish()
        return exhausted

    def _publish(self) -> None:
        self._depth.set(self.depth())
        self._leased.set(sum(self.held().values()))


def _worker_metrics() -> dict:
    tags = ("worker",)
    return {
        "turns": Counter("csm_render_turns", "Turns rendered and committed.", tag_keys=tags),
        "frames": Counter("csm_render_frames", "Mimi frames (80 ms each) rendered.", tag_keys=tags),
        "audio": Counter("csm_render_audio_seconds", "Seconds of audio rendered.", tag_keys=tags),
        "conversations": Counter("csm_render_conversations", "Conversations finished.", tag_keys=tags),
        "failures": Counter("csm_render_failures", "Conversations failed.", tag_keys=tags),
    }
