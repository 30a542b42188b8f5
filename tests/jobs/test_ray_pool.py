"""How many render workers a job starts and what each asks Ray for (jobs.cluster.ray_pool.worker_plan)."""

from __future__ import annotations

import pytest

from jobs.cluster.ray_pool import worker_plan, worker_device
from jobs.runner import RunConfig


def cfg(**kwargs) -> RunConfig:
    return RunConfig(manifests=[], out="out", model="random:tiny", **kwargs)


def test_one_worker_per_gpu_by_default():
    assert worker_plan(cfg(), {"CPU": 64, "GPU": 8}, 100) == (8, {"num_gpus": 1.0, "num_cpus": 1})


def test_fractional_gpus_pack_several_workers_per_gpu():
    count, resources = worker_plan(cfg(gpus_per_worker=0.5), {"CPU": 64, "GPU": 4}, 100)
    assert (count, resources["num_gpus"]) == (8, 0.5)


def test_device_cuda_asks_for_gpus_a_cluster_does_not_have_yet():
    # An autoscaling cluster adds GPU nodes for the pending workers.
    count, resources = worker_plan(cfg(device="cuda", workers=4), {"CPU": 4}, 100)
    assert (count, resources["num_gpus"]) == (4, 1.0)
    assert worker_device(cfg(device="cuda"), resources) == "cuda"


def test_cpu_workers_share_the_cores():
    assert worker_plan(cfg(), {"CPU": 8}, 100) == (1, {"num_gpus": 0.0, "num_cpus": 8})
    assert worker_plan(cfg(workers=3), {"CPU": 8}, 100) == (3, {"num_gpus": 0.0, "num_cpus": 2})
    assert worker_plan(cfg(workers=16), {"CPU": 8}, 100)[1]["num_cpus"] == 1
    assert worker_device(cfg(), {"num_gpus": 0.0}) == "cpu"


def test_a_cpu_worker_fits_on_one_node():
    assert worker_plan(cfg(), {"CPU": 32}, 100, largest_node_cpus=8)[1]["num_cpus"] == 8


@pytest.mark.parametrize("resources", [{"CPU": 8}, {"CPU": 8, "GPU": 8}])
def test_never_more_workers_than_conversations(resources):
    assert worker_plan(cfg(workers=6), resources, 2)[0] == 2


def test_logical_gpus_can_place_workers_that_compute_on_the_cpu():
    count, resources = worker_plan(cfg(device="cpu", gpus_per_worker=1), {"CPU": 4, "GPU": 3}, 100)
    assert (count, resources["num_gpus"]) == (3, 1)
    assert worker_device(cfg(device="cpu"), resources) == "cpu"
