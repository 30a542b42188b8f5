"""How many render workers a job starts and what each asks Ray for (jobs.cluster.ray_pool.worker_plan), and the
check before joining a cluster that may have Ray token authentication on (check_cluster_access)."""

from __future__ import annotations

import pytest

from jobs.cluster.auth import ClusterAuthError
from jobs.cluster.ray_pool import check_cluster_access, worker_plan, worker_device
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


@pytest.fixture(params=[True, False], ids=["token-secured", "open"])
def gcs(request):
    """A stand-in GCS: GetClusterId, refused without the token "good" when token-secured (as Ray's GCS refuses
    it); yields (address, token-secured)."""
    from concurrent import futures

    import grpc

    def get_cluster_id(_request, context):
        if request.param and ("authorization", "Bearer good") not in context.invocation_metadata():
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "InvalidAuthToken: Authentication token is incorrect")
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("ray.rpc.NodeInfoGcsService", {
        "GetClusterId": grpc.unary_unary_rpc_method_handler(get_cluster_id)}),))
    port = server.add_insecure_port("0.0.0.0:0")  # ray.init (and so the check) resolves 127.0.0.1 to this host's IP
    server.start()
    yield f"127.0.0.1:{port}", request.param
    server.stop(None)


@pytest.fixture
def token_mode_calls(monkeypatch):
    """Records the switch to token mode instead of making it: it would change this test process's Ray config."""
    from jobs.cluster import auth

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    calls = []
    monkeypatch.setattr(auth, "use_token_mode", lambda: calls.append("token"))
    return calls


def test_joining_sends_the_token_only_to_a_cluster_that_wants_one(gcs, token_mode_calls, monkeypatch):
    address, secured = gcs
    monkeypatch.setenv("RAY_AUTH_TOKEN", "good")
    check_cluster_access(address)
    assert token_mode_calls == (["token"] if secured else [])


@pytest.mark.parametrize("gcs", [True], ids=["token-secured"], indirect=True)
def test_a_refused_token_is_a_clear_error_before_ray_init(gcs, token_mode_calls, monkeypatch):
    address, _ = gcs
    monkeypatch.setenv("RAY_AUTH_TOKEN", "stale")
    with pytest.raises(ClusterAuthError, match=f"the Ray cluster at {address} refused the token from RAY_AUTH_TOKEN"):
        check_cluster_access(address)
    assert token_mode_calls == []


def test_a_ray_of_its_own_asks_no_cluster_and_keeps_rays_default_mode_quietly(token_mode_calls, monkeypatch):
    # Ray turns token mode on for a new local Ray and warns about it unless RAY_AUTH_MODE is set: the job sets
    # the same mode itself (so Ray has nothing to warn of), and leaves a mode the user set alone.
    from jobs.cluster import auth

    monkeypatch.setattr(auth, "gcs_probe", lambda address: pytest.fail(f"asked {address}"))
    check_cluster_access(None)
    check_cluster_access("local")
    assert token_mode_calls == ["token", "token"]
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    check_cluster_access("local")
    assert token_mode_calls == ["token", "token"]


def test_rays_own_refusal_is_one_line(token_mode_calls, monkeypatch):
    """A local Ray with RAY_AUTH_TOKEN_PATH naming no file: Ray raises a paragraph; the job says one line."""
    from ray.exceptions import AuthenticationError

    from jobs.cluster import ray_pool

    def refuse(**_):
        raise AuthenticationError("RAY_AUTH_TOKEN_PATH is set but file cannot be opened or is empty: /gone. Ensure "
                                  "that the token is available.\nFor more information, see: https://docs.ray.io")

    monkeypatch.setattr(ray_pool.ray, "init", refuse)
    with pytest.raises(ClusterAuthError) as error:
        ray_pool.connect("local")
    message = str(error.value)
    assert "\n" not in message and "docs.ray.io" not in message
    assert message.startswith("Ray refused to start or join a cluster: RAY_AUTH_TOKEN_PATH is set but file cannot "
                              "be opened or is empty: /gone; give this machine the cluster's token in RAY_AUTH_TOKEN")
