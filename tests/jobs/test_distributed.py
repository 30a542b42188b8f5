"""Distributed execution on a multi-node local Ray cluster: `ray.cluster_utils.Cluster` with a head node without
GPUs and worker nodes with one logical GPU each (the model computes on the CPU; the GPU resource only places the
workers, one per node). The job spreads over the nodes; a killed worker process, a node removed mid-job, a
conversation that crashes every worker it lands on and one that stalls them cost nothing committed, and every
turn lands exactly once.

The job runs in this process (run_job, joined to the cluster), in a thread when the test must act mid-job.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from jobs.storage import layout
from jobs.manifests.manifest import ConversationSpec, TurnSpec
from jobs.plan.order import Defaults
from jobs.qc_options import QcOptions
from jobs.watermark_options import WatermarkOptions
from jobs.runner import RunConfig, run_job
from jobs.storage import TMP_PREFIX

pytestmark = pytest.mark.slow

GPU_NODES = 3
TEXTS = ("Good morning, everyone.", "Morning! Did you sleep well?", "Not really, the train was loud.",
         "Let us get some coffee then.")
WAIT_S = 240  # the longest any wait here may take before the test fails instead of hanging


@pytest.fixture(scope="module")
def cluster(csm_cache):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    # A lost node is declared dead after about 3 missed 1 s health checks instead of Ray's default ~30 s.
    health = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
              "health_check_failure_threshold": 3}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": health})
    for _ in range(GPU_NODES):
        c.add_node(num_cpus=1, num_gpus=1)
    # The workers import the fault hook from this repository's tests package.
    path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]))
    ray.init(address=c.address, logging_level="WARNING",
             runtime_env={"worker_process_setup_hook": "tests.jobs.worker_faults.install",
                          "env_vars": {"PYTHONPATH": path}})
    yield c
    ray.shutdown()
    c.shutdown()


def conversations(n: int, turns: int = 3, prefix: str = "c") -> list[ConversationSpec]:
    return [ConversationSpec(f"{prefix}{i:02d}", [TurnSpec(f"{prefix}{i:02d}", t, t % 2, TEXTS[(i + t) % 4])
                                                  for t in range(turns)]) for i in range(n)]


def config(out: Path, **kwargs) -> RunConfig:
    return RunConfig(manifests=[], out=str(out), model="random:tiny", device="cpu", gpus_per_worker=1,
                     batch_size=2, defaults=Defaults(max_audio_length_ms=kwargs.pop("max_ms", 800)), **kwargs)


def expected_turns(convs) -> set[tuple[str, int]]:
    return {(c.conversation_id, t.turn_index) for c in convs for t in c.turns if not t.is_given}


def commit_records(out: Path) -> dict[tuple[str, int], int]:
    """(conversation_id, turn_index) -> mtime_ns of its commit record."""
    found = {}
    for path in (out / "commits").rglob("*.json") if (out / "commits").exists() else []:
        if not path.name.startswith(TMP_PREFIX):
            parsed = layout.parse_commit_key(path.relative_to(out).as_posix())
            found[parsed] = path.stat().st_mtime_ns
    return found


def assert_exactly_once(out: Path, convs) -> None:
    want = expected_turns(convs)
    assert set(commit_records(out)) == want
    rows = ds.dataset(out / "metadata", format="parquet").to_table(columns=["conversation_id", "turn_index"])
    pairs = list(zip(*rows.to_pydict().values()))
    assert len(pairs) == len(set(pairs)), "a turn has two metadata rows"
    assert set(pairs) == want
    for cid, idx in want:
        assert (out / layout.audio_key(cid, idx, ".wav")).is_file() and (out / layout.codes_key(cid, idx)).is_file()
    assert [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)] == []


def wait_for(condition, what: str, thread: threading.Thread | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert thread is None or thread.is_alive(), f"the job ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def render_worker_pids() -> list[int]:
    """Processes of live render actors: Ray titles an actor's process after its class and running method."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().startswith(b"ray::RayRenderWorker"):
                        pids.append(int(entry))
            except OSError:  # the process ended meanwhile
                continue
    return pids


class Background:
    """run_job in a thread, so the test can act while it runs."""

    def __init__(self, cfg: RunConfig, convs):
        self.summary, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(cfg, convs), daemon=True)
        self.thread.start()

    def _run(self, cfg, convs):
        try:
            self.summary = run_job(cfg, convs)
        except BaseException as e:  # surfaced by result()
            self.error = e

    def result(self):
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "the job did not finish"
        if self.error:
            raise self.error
        return self.summary


def test_job_spreads_over_the_nodes(cluster, tmp_path):
    convs = conversations(12)
    summary = run_job(config(tmp_path / "out"), convs)
    assert summary.exit_code == 0 and summary.failed == {}
    assert summary.turns_rendered == len(expected_turns(convs))
    assert_exactly_once(tmp_path / "out", convs)
    nodes = {summary.node_of_worker[w] for w, turns in summary.turns_by_worker.items() if turns}
    assert len(nodes) >= 2, summary.turns_by_worker
    assert nodes <= {n.node_id for n in cluster.worker_nodes}  # only GPU nodes host render workers


def test_killed_worker_is_replaced_and_its_conversations_continue(cluster, tmp_path):
    out, convs = tmp_path / "out", conversations(10)
    job = Background(config(out), convs)
    wait_for(lambda: len(commit_records(out)) >= 3, "three commits", job.thread)
    os.kill(render_worker_pids()[0], signal.SIGKILL)
    committed_at_kill = commit_records(out)
    summary = job.result()
    assert summary.exit_code == 0 and summary.failed == {}
    assert summary.workers_lost >= 1
    assert_exactly_once(out, convs)
    now = commit_records(out)
    assert {k: now[k] for k in committed_at_kill} == committed_at_kill, "a committed turn was written again"


def test_conversation_that_crashes_its_workers_fails_after_max_attempts_and_the_rest_completes(cluster, tmp_path):
    """"crash" kills every worker that takes it (tests/jobs/worker_faults.py). Its first attempt may share a worker
    with other conversations; its last runs alone, so only it runs out of attempts and the rest complete."""
    crash = conversations(1, prefix="crash")
    good = conversations(5)
    out = tmp_path / "out"
    summary = run_job(config(out, max_attempts=2), [*crash, *good])
    assert set(summary.failed) == {"crash00"}
    record = json.loads((out / layout.failure_key("crash00")).read_text())
    assert record["error_type"] == "WorkerLost" and record["attempts"] == 2
    assert summary.workers_lost == 2
    assert_exactly_once(out, good)
    assert not (out / "commits" / "crash00").exists()


def test_watchdog_stops_a_stalled_worker_and_its_conversation_fails_after_max_attempts(cluster, tmp_path):
    """"stall" blocks the render loop of every worker that takes it, which then commits nothing: the watchdog
    stops each such worker, its other conversations go elsewhere, and after two attempts "stall" is failed."""
    stall = conversations(1, prefix="stall")
    good = conversations(4)
    out = tmp_path / "out"
    # No watermark and no re-renders: on these CPUs they make a good worker's first commit take seconds, which a
    # 5 s watchdog would take for a stall too (it did, on a 2-core EPYC, at the commit before the watermark too).
    summary = run_job(config(out, watchdog_s=5.0, max_attempts=2, watermark=WatermarkOptions(enabled=False),
                             qc=QcOptions(retries=0)), [*stall, *good])
    assert set(summary.failed) == {"stall00"}
    record = json.loads((out / layout.failure_key("stall00")).read_text())
    assert record["error_type"] == "WorkerLost" and record["attempts"] == 2
    assert summary.workers_lost == 2
    assert_exactly_once(out, good)


def test_node_removed_mid_job_loses_nothing_committed(cluster, tmp_path):
    out, convs = tmp_path / "out", conversations(10)
    job = Background(config(out), convs)
    wait_for(lambda: len(commit_records(out)) >= 3, "three commits", job.thread)
    victim = min(cluster.worker_nodes, key=lambda n: n.node_id)  # every GPU node hosts a render worker
    cluster.remove_node(victim, allow_graceful=False)
    committed_at_loss = commit_records(out)
    cluster.add_node(num_cpus=1, num_gpus=1)  # as an autoscaler replaces a preempted node
    summary = job.result()
    assert summary.exit_code == 0 and summary.failed == {}
    assert summary.workers_lost >= 1
    assert_exactly_once(out, convs)
    now = commit_records(out)
    assert {k: now[k] for k in committed_at_loss} == committed_at_loss
