"""The deployment files under infra/: they parse, and they keep the fields a user's cluster relies on.

Each `check_*` function asserts what one kind of file must hold; the `test_*_without_*` tests remove one field at
a time from a copy and assert that the check then fails, so no check can pass vacuously.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
KUBERAY = INFRA / "kuberay"
LAUNCHER = INFRA / "cluster-launcher" / "aws.yaml"
DOCKERFILE = INFRA / "Dockerfile"
SECRET_KEYS = {"HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}


# ---------------------------------------------------------------------------------------------- loading

def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> list[tuple[str, dict]]:
    """Every Kubernetes object under infra/kuberay, plus the manifests kept inside ConfigMaps (a RayJob that a
    CronJob creates), each with a label saying where it came from."""
    found = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in load_docs(path):
            found.append((path.name, doc))
            if doc.get("kind") == "ConfigMap":
                for key, value in (doc.get("data") or {}).items():
                    if key.endswith((".yaml", ".yml")):
                        found += [(f"{path.name}:{key}", d) for d in yaml.safe_load_all(value) if d is not None]
    return found


def objects_of(kind: str) -> list[tuple[str, dict]]:
    return [(where, doc) for where, doc in k8s_objects() if doc.get("kind") == kind]


def the_one(kind: str, name: str) -> dict:
    docs = [doc for where, doc in objects_of(kind) if where == name]
    assert len(docs) == 1, f"expected one {kind} in {name}, found {len(docs)}"
    return docs[0]


def rayjob_specs() -> list[tuple[str, dict]]:
    """The spec of every RayJob that can run: RayJob objects and the jobTemplate of each RayCronJob."""
    specs = [(where, doc["spec"]) for where, doc in objects_of("RayJob")]
    specs += [(where, doc["spec"]["jobTemplate"]) for where, doc in objects_of("RayCronJob")]
    return specs


def schedules() -> list[tuple[str, str]]:
    return [(where, doc["spec"].get("schedule")) for where, doc in k8s_objects()
            if doc.get("kind") in ("RayCronJob", "CronJob")]


def remove(doc: dict, path: str) -> dict:
    """A copy of `doc` without the field at `path` ("spec.workerGroupSpecs.0.rayStartParams.num-gpus")."""
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        del node[int(last)]
    else:
        del node[last]
    return doc


# ---------------------------------------------------------------------------------------------- checks

def _main_container(template: dict) -> dict:
    containers = template["spec"]["containers"]
    assert containers, "a pod template has no container"
    return containers[0]  # KubeRay runs Ray in the first container


def _gpu_limit(template: dict) -> int:
    limits = (_main_container(template).get("resources") or {}).get("limits") or {}
    return int(limits.get("nvidia.com/gpu", 0))


def gpu_worker_groups(cluster_spec: dict) -> list[dict]:
    return [g for g in cluster_spec.get("workerGroupSpecs") or [] if _gpu_limit(g["template"]) >= 1]


def _quantity(value) -> float:
    """A Kubernetes memory quantity (or plain bytes) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    number, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * units.get(unit, 1)


def check_pod_resources(template: dict) -> None:
    """Requests equal to limits in every container: Ray sizes itself from the limits, and a pod that may be
    squeezed below them (or evicted first) holds a GPU and an engine's worth of work."""
    for container in template["spec"]["containers"]:
        resources = container.get("resources") or {}
        assert resources.get("limits") and resources.get("requests") == resources["limits"], \
            f"{container['name']}: requests must equal limits"


def check_shared_memory(group: dict) -> None:
    """Ray's object store lives in /dev/shm: a memory emptyDir there, larger than the store Ray is told to use
    (Ray's default, 30% of the pod's memory, would not fit a small one and would fall back to disk)."""
    pod = group["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in _main_container(group["template"]).get("volumeMounts", [])}
    shm = [v for v in pod.get("volumes", []) if mounts.get(v["name"]) == "/dev/shm"]
    assert shm and (shm[0].get("emptyDir") or {}).get("medium") == "Memory", "no memory volume at /dev/shm"
    store = group.get("rayStartParams", {}).get("object-store-memory")
    assert store, "rayStartParams object-store-memory must bound the object store to fit /dev/shm"
    assert _quantity(store) < _quantity(shm[0]["emptyDir"]["sizeLimit"]), "the object store does not fit /dev/shm"


def check_cluster_spec(spec: dict) -> None:
    """What every RayCluster spec here needs, standalone or inside a RayJob."""
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(spec.get("rayVersion", ""))), "rayVersion must name the image's Ray"
    assert (spec.get("authOptions") or {}).get("mode") == "token", \
        "Ray token authentication (authOptions.mode: token) keeps other pods from running code on the cluster"
    for group in [spec.get("headGroupSpec") or {}, *(spec.get("workerGroupSpecs") or [])]:
        if group.get("template"):
            check_pod_resources(group["template"])
            check_shared_memory(group)
    head = spec.get("headGroupSpec")
    assert head and head.get("template"), "no headGroupSpec with a pod template"
    head_container = _main_container(head["template"])
    assert head_container.get("image"), "the head container has no image"
    assert _gpu_limit(head["template"]) == 0, "the head is a CPU pod"
    assert str(head.get("rayStartParams", {}).get("num-cpus")) == "0", "render actors must stay off the head"
    groups = gpu_worker_groups(spec)
    assert groups, "no worker group requests nvidia.com/gpu"
    for group in groups:
        assert group.get("groupName"), "a worker group has no groupName"
        gpus = _gpu_limit(group["template"])
        assert str(group.get("rayStartParams", {}).get("num-gpus")) == str(gpus), \
            "rayStartParams num-gpus must equal the nvidia.com/gpu limit"
        assert 0 <= group["minReplicas"] <= group["maxReplicas"], "need 0 <= minReplicas <= maxReplicas"
        assert group["maxReplicas"] >= 1, "maxReplicas must allow at least one GPU worker"
        requests = (_main_container(group["template"]).get("resources") or {}).get("requests") or {}
        if "nvidia.com/gpu" in requests:
            assert int(requests["nvidia.com/gpu"]) == gpus, "GPU requests and limits must be equal"


def check_raycluster(doc: dict) -> None:
    assert doc.get("apiVersion") == "ray.io/v1" and doc.get("kind") == "RayCluster"
    spec = doc["spec"]
    check_cluster_spec(spec)
    assert spec.get("enableInTreeAutoscaling") is True, "the standalone cluster must autoscale"
    assert any(g["maxReplicas"] > g["minReplicas"] for g in gpu_worker_groups(spec)), \
        "autoscaling needs room between minReplicas and maxReplicas"


def entrypoint_args(entrypoint: str) -> list[str]:
    args = shlex.split(entrypoint or "")
    assert args[:2] == ["csm-render", "run"], f"the entrypoint must call `csm-render run`, not {entrypoint!r}"
    return args


def option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name:
            assert i + 1 < len(args) and not args[i + 1].startswith("--"), f"{name} has no value"
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def check_rayjob_spec(spec: dict) -> None:
    assert spec.get("shutdownAfterJobFinishes") is True, "the job's cluster must be deleted when it finishes"
    assert isinstance(spec.get("ttlSecondsAfterFinished"), int) and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec.get("backoffLimit"), int) and spec["backoffLimit"] >= 0, "no retry limit"
    assert isinstance(spec.get("activeDeadlineSeconds"), int) and spec["activeDeadlineSeconds"] > 0, "no deadline"
    assert spec.get("submissionMode") == "K8sJobMode"
    args = entrypoint_args(spec.get("entrypoint"))
    assert option(args, "--out"), "the entrypoint must write somewhere: --out"
    assert not args[2].startswith("--"), "the entrypoint names no manifest"
    cluster = spec.get("rayClusterSpec")
    assert cluster, "no rayClusterSpec: the job needs a cluster of its own"
    check_cluster_spec(cluster)
    workers = option(args, "--workers")
    if workers is not None:
        gpus = sum(g.get("replicas", g["minReplicas"]) * _gpu_limit(g["template"]) for g in gpu_worker_groups(cluster))
        assert int(workers) == gpus, f"--workers {workers} but the cluster starts with {gpus} GPUs"


CRON_FIELDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
CRON_NAMES = {3: "jan feb mar apr may jun jul aug sep oct nov dec".split(), 4: "sun mon tue wed thu fri sat".split()}


def check_cron(expr: str) -> None:
    """A standard 5-field cron expression (minute hour day-of-month month day-of-week)."""
    assert isinstance(expr, str), "no schedule"
    fields = expr.split()
    assert len(fields) == 5, f"{expr!r}: a cron schedule has 5 fields"
    for index, (field, (low, high)) in enumerate(zip(fields, CRON_FIELDS)):
        names = CRON_NAMES.get(index, [])
        for part in field.split(","):
            match = re.fullmatch(r"(\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/([0-9]+))?", part.lower())
            assert match, f"{expr!r}: bad field {field!r}"
            if match.group(2) is not None:
                assert int(match.group(2)) >= 1, f"{expr!r}: step must be >= 1"
            if match.group(1) == "*":
                continue
            for value in match.group(1).split("-"):
                number = names.index(value) + (1 if index == 3 else 0) if value in names else value
                assert str(number).isdigit() and low <= int(number) <= high, \
                    f"{expr!r}: {value!r} is out of range {low}-{high} in field {index + 1}"


PLACEHOLDER = "REPLACE_ME"
REAL_SECRET_PATTERNS = [r"hf_[A-Za-z0-9]{20,}", r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", r"[A-Za-z0-9/+]{40}"]


def check_secret_example(doc: dict) -> None:
    assert doc.get("kind") == "Secret"
    values = {**(doc.get("stringData") or {}), **(doc.get("data") or {})}
    missing = SECRET_KEYS - set(values)
    assert not missing, f"the example Secret lacks {sorted(missing)}"
    for key, value in values.items():
        assert PLACEHOLDER in str(value), f"{key} must be a placeholder containing {PLACEHOLDER}"
        for pattern in REAL_SECRET_PATTERNS:
            assert not re.search(pattern, str(value)), f"{key} looks like a real credential"


def check_launcher(cfg: dict) -> None:
    assert cfg.get("cluster_name")
    provider = cfg.get("provider") or {}
    assert provider.get("type") == "aws" and provider.get("region"), "provider needs type aws and a region"
    types = cfg.get("available_node_types") or {}
    head = cfg.get("head_node_type")
    assert head in types, "head_node_type must name one of available_node_types"
    workers = {name: t for name, t in types.items() if name != head}
    assert workers, "no worker node type"
    for name, node_type in types.items():
        assert "resources" in node_type, f"{name}: resources is required ({{}} detects them)"
        assert node_type.get("node_config", {}).get("InstanceType"), f"{name}: no InstanceType"
    gpu_family = re.compile(r"(g4dn|g5|g6|g6e|p4d|p5)\.")
    gpu_types = [t for t in workers.values() if gpu_family.match(t["node_config"]["InstanceType"])]
    assert gpu_types, "no GPU worker node type"
    for t in gpu_types:
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"] <= cfg["max_workers"]
    setup = " ; ".join(cfg.get("setup_commands") or [])
    assert re.search(r"pip install [^;]*~/csm-render", setup), "setup_commands must install the project"
    mounted = (cfg.get("file_mounts") or {}).get("/home/ubuntu/csm-render")
    assert mounted == ".", "file_mounts must copy the checkout to ~/csm-render"
    assert "torch" in setup, "setup_commands must install torch"


def dockerfile_lines(text: str) -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(current)
            current = ""
    return lines


def dockerfile_args(text: str) -> dict[str, str]:
    return dict(re.fullmatch(r"ARG (\w+)=?(.*)", l).groups() for l in dockerfile_lines(text) if l.startswith("ARG "))


def check_dockerfile(text: str) -> None:
    lines = dockerfile_lines(text)
    args = dockerfile_args(text)
    froms = [re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), l.split()[1])
             for l in lines if l.upper().startswith("FROM ")]
    assert froms, "no FROM"
    assert "cuda" in froms[-1].lower(), f"the image must build on a CUDA base, not {froms[-1]!r}"
    runs = " ; ".join(l for l in lines if l.upper().startswith("RUN "))
    pip_installs = [c.strip() for c in re.split(r"&&|\|\||;", runs) if re.search(r"\bpip install\b", c)]
    assert any(re.search(r"\btorch\b", c) for c in pip_installs), "torch is not installed"
    # The build must fail when torch's CUDA and the base image's differ (pods would start with no usable GPU).
    assert re.search(r"torch\.version\.cuda == base", runs) and "CUDA_VERSION" in runs, \
        "the build does not compare torch's CUDA with the base image's"
    assert "TORCH_INDEX_URL=" in " ".join(lines) or not args.get("TORCH_INDEX_URL"), "TORCH_INDEX_URL must be settable"
    copies = [l for l in lines if l.upper().startswith(("COPY ", "ADD "))]
    project = [c.split()[-1].rstrip("/") for c in copies if "pyproject.toml" in c]
    assert project, "the project's pyproject.toml is not copied"
    assert any({project[0], project[0] + "/"} & set(c.split("pip install", 1)[1].split()) for c in pip_installs), \
        f"the project copied to {project[0]} is not pip-installed"
    for c in copies:
        sources = [s for s in c.split()[1:-1] if not s.startswith("--")]
        assert "." not in sources and "./" not in sources, f"{c!r} copies the whole context (weights included)"
        assert not re.search(r"safetensors|weights|\.bin\b|\.pt\b|huggingface|hf_cache|models?/", c, re.I), \
            f"{c!r} copies model weights into the image"
    users = [l.split()[1] for l in lines if l.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    assert re.search(r"\bHF_HOME=/", " ".join(lines)), "HF_HOME must point at a volume path"
    assert "csm-render --help" in runs, "no build-time smoke check"


# ---------------------------------------------------------------------------------------------- tests

def test_infra_has_the_expected_files():
    names = {str(p.relative_to(INFRA)) for p in INFRA.rglob("*") if p.is_file()}
    for name in ["Dockerfile", "README.md", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml",
                 "kuberay/raycronjob.yaml", "kuberay/cronjob-kubectl.yaml", "kuberay/secret.example.yaml",
                 "cluster-launcher/aws.yaml"]:
        assert name in names


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_file_parses_to_mappings(path):
    docs = load_docs(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(d, dict) for d in docs)


def test_every_kubernetes_object_names_its_kind_and_itself():
    objects = k8s_objects()
    assert len(objects) >= 8
    for where, doc in objects:
        assert doc.get("apiVersion") and doc.get("kind"), where
        meta = doc.get("metadata") or {}
        assert meta.get("name") or meta.get("generateName"), f"{where}: {doc['kind']} has no name"
        if doc["kind"].startswith("Ray"):
            assert doc["apiVersion"] == "ray.io/v1", f"{where}: KubeRay objects are ray.io/v1"


def test_raycluster():
    check_raycluster(the_one("RayCluster", "raycluster.yaml"))


@pytest.mark.parametrize("path", [
    "spec.enableInTreeAutoscaling",
    "spec.headGroupSpec",
    "spec.headGroupSpec.rayStartParams.num-cpus",
    "spec.workerGroupSpecs.0",
    "spec.workerGroupSpecs.0.rayStartParams.num-gpus",
    "spec.workerGroupSpecs.0.template.spec.containers.0.resources.limits.nvidia.com/gpu",
    "spec.workerGroupSpecs.0.maxReplicas",
    "spec.rayVersion",
    "spec.authOptions",
    "spec.headGroupSpec.template.spec.volumes.1",
    "spec.headGroupSpec.rayStartParams.object-store-memory",
    "spec.workerGroupSpecs.0.template.spec.containers.0.resources.requests",
])
def test_raycluster_check_fails_without(path):
    doc = the_one("RayCluster", "raycluster.yaml")
    if path.endswith("nvidia.com/gpu"):  # the key itself holds dots
        doc = copy.deepcopy(doc)
        del doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "nvidia.com/gpu"]
    else:
        doc = remove(doc, path)
    with pytest.raises((AssertionError, KeyError)):
        check_raycluster(doc)


def test_rayjobs():
    specs = rayjob_specs()
    assert {where for where, _ in specs} >= {"rayjob.yaml", "raycronjob.yaml", "cronjob-kubectl.yaml:rayjob.yaml"}
    for where, spec in specs:
        try:
            check_rayjob_spec(spec)
        except AssertionError as e:
            raise AssertionError(f"{where}: {e}") from e


@pytest.mark.parametrize("field", ["shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "backoffLimit",
                                   "activeDeadlineSeconds", "entrypoint", "rayClusterSpec", "submissionMode"])
def test_rayjob_check_fails_without(field):
    for where, spec in rayjob_specs():
        with pytest.raises(AssertionError):
            check_rayjob_spec(remove(spec, field))


@pytest.mark.parametrize("entrypoint", [
    "csm-render run s3://bucket/manifests/ --model sesame/csm-1b",      # no --out
    "csm-render validate s3://bucket/manifests/ --out s3://b/o",        # not run
    "python render.py --out s3://b/o",
    "csm-render run --out s3://b/o",                                    # no manifest
    "csm-render run m/ --out s3://b/o --workers 3",                     # not the cluster's 4 GPUs
])
def test_rayjob_check_rejects_entrypoint(entrypoint):
    where, spec = rayjob_specs()[0]
    spec = {**spec, "entrypoint": entrypoint}
    with pytest.raises(AssertionError):
        check_rayjob_spec(spec)


def test_schedules_are_5_field_cron():
    found = schedules()
    assert {where for where, _ in found} == {"raycronjob.yaml", "cronjob-kubectl.yaml"}
    for where, expr in found:
        check_cron(expr)


def test_scheduled_runs_end_before_the_next_one():
    """Neither scheduler stops a second run on the same OUT: each run, retries included, must end within a day."""
    for where, spec in rayjob_specs():
        if where != "rayjob.yaml":
            attempts = spec["backoffLimit"] + 1
            assert attempts * spec["activeDeadlineSeconds"] < 24 * 3600, where


@pytest.mark.parametrize("expr", ["0 2 * *", "0 2 * * * *", "60 2 * * *", "0 24 * * *", "0 2 0 * *",
                                  "0 2 * 13 *", "0 2 * * 8", "0 2 * * mon-xyz", "*/0 2 * * *", "", None])
def test_cron_check_rejects(expr):
    with pytest.raises(AssertionError):
        check_cron(expr)


@pytest.mark.parametrize("expr", ["0 2 * * *", "*/15 * * * *", "0 0-6/2 1,15 jan-jun mon-fri", "5 4 * * 7"])
def test_cron_check_accepts(expr):
    check_cron(expr)


def test_cronjob_fallback_may_only_create_rayjobs():
    cronjob = the_one("CronJob", "cronjob-kubectl.yaml")
    role = the_one("Role", "cronjob-kubectl.yaml")
    binding = the_one("RoleBinding", "cronjob-kubectl.yaml")
    account = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]
    assert the_one("ServiceAccount", "cronjob-kubectl.yaml")["metadata"]["name"] == account
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert any(s["kind"] == "ServiceAccount" and s["name"] == account for s in binding["subjects"])
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create"]}]
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["create", "-f"]
    configmap = the_one("ConfigMap", "cronjob-kubectl.yaml")
    volumes = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
    assert any(v.get("configMap", {}).get("name") == configmap["metadata"]["name"] for v in volumes)


def test_secret_example_has_the_keys_and_only_placeholders():
    check_secret_example(the_one("Secret", "secret.example.yaml"))


@pytest.mark.parametrize("key", sorted(SECRET_KEYS))
def test_secret_check_fails_without_a_key(key):
    doc = the_one("Secret", "secret.example.yaml")
    with pytest.raises(AssertionError):
        check_secret_example(remove(doc, f"stringData.{key}"))


@pytest.mark.parametrize("value", ["hf_abcdefghijklmnopqrstuvwxyz123456", "AKIAABCDEFGHIJKLMNOP",
                                   "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "hunter2"])
def test_secret_check_rejects_real_looking_values(value):
    doc = copy.deepcopy(the_one("Secret", "secret.example.yaml"))
    doc["stringData"]["HF_TOKEN"] = value
    with pytest.raises(AssertionError):
        check_secret_example(doc)


def test_every_ray_pod_reads_the_secret_and_uses_one_image():
    secret = the_one("Secret", "secret.example.yaml")["metadata"]["name"]
    clusters = [(w, d["spec"]) for w, d in objects_of("RayCluster")]
    clusters += [(w, s["rayClusterSpec"]) for w, s in rayjob_specs()]
    images = set()
    for where, spec in clusters:
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            container = _main_container(group["template"])
            refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
            assert refs == [secret], f"{where}: {container['name']} must read the Secret {secret}"
            images.add(container["image"])
    assert images == {f"ghcr.io/your-org/csm-render:{image_tag()}"}


def image_tag() -> str:
    """The one tag every pod pins: the project's version, its Ray and its CUDA line (from the Dockerfile), so head
    and workers can never run different builds under a moving `latest`."""
    import tomllib

    project = tomllib.loads((INFRA.parent / "pyproject.toml").read_text())["project"]["version"]
    args = dockerfile_args(DOCKERFILE.read_text())
    cuda = re.search(r"nvidia/cuda:(\d+\.\d+)\.", args["CUDA_IMAGE"]).group(1)
    return f"{project}-ray{args['RAY_VERSION']}-cuda{cuda}"


def test_the_scheduled_runs_skip_when_a_run_still_holds_out():
    # A late or doubled run (RayCronJob replays every missed run at once) must end as a no-op, not a failure.
    for where, spec in rayjob_specs():
        if where != "rayjob.yaml":
            assert option(entrypoint_args(spec["entrypoint"]), "--if-busy") == "skip", where


def test_the_docs_select_a_cronjobs_runs_by_the_label_kuberay_gives_them():
    # KubeRay labels a RayCronJob's RayJobs ray.io/cronjob-name=<name>; no other label of ours reaches them.
    name = the_one("RayCronJob", "raycronjob.yaml")["metadata"]["name"]
    for text in ((INFRA / "README.md").read_text(), (KUBERAY / "raycronjob.yaml").read_text()):
        selectors = re.findall(r"kubectl get rayjobs? -l ([\w./-]+=[\w.-]+)", text)
        cron = [s for s in selectors if "nightly" in s or "cronjob" in s]
        assert f"ray.io/cronjob-name={name}" in cron


def test_the_raycronjob_says_how_to_check_its_feature_gate():
    text = (KUBERAY / "raycronjob.yaml").read_text()
    assert "RayCronJob=true" in text and "kubectl -n kuberay-operator get deploy" in text


def test_ray_version_is_the_same_everywhere():
    args = dockerfile_args(DOCKERFILE.read_text())
    version = args["RAY_VERSION"]
    clusters = [d["spec"] for _, d in objects_of("RayCluster")] + [s["rayClusterSpec"] for _, s in rayjob_specs()]
    assert {c["rayVersion"] for c in clusters} == {version}
    assert f'"ray[default]=={version}"' in " ".join(yaml.safe_load(LAUNCHER.read_text())["setup_commands"])


def test_cluster_launcher_config():
    check_launcher(yaml.safe_load(LAUNCHER.read_text()))


@pytest.mark.parametrize("path", ["provider", "head_node_type", "available_node_types.gpu_worker",
                                  "available_node_types.head.resources", "setup_commands", "file_mounts"])
def test_cluster_launcher_check_fails_without(path):
    cfg = yaml.safe_load(LAUNCHER.read_text())
    with pytest.raises((AssertionError, KeyError)):
        check_launcher(remove(cfg, path))


def test_cluster_launcher_config_matches_rays_schema():
    """The schema `ray up` validates against, from the installed Ray."""
    jsonschema = pytest.importorskip("jsonschema")
    spec = importlib.util.find_spec("ray")
    schema_path = Path(spec.origin).parent / "autoscaler" / "ray-schema.json" if spec and spec.origin else None
    if schema_path is None or not schema_path.exists():
        pytest.skip("Ray's cluster config schema is not installed")
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(yaml.safe_load(LAUNCHER.read_text()), schema)


def test_dockerfile():
    check_dockerfile(DOCKERFILE.read_text())


def _without_line(text: str, pattern: str) -> str:
    kept = [line for line in text.splitlines() if not re.search(pattern, line)]
    assert len(kept) < len(text.splitlines()), f"no line matches {pattern!r}"
    return "\n".join(kept)


@pytest.mark.parametrize("mutate", [
    lambda t: _without_line(t, r"^FROM "),
    lambda t: t.replace("nvidia/cuda:13.0.1-runtime-ubuntu24.04", "ubuntu:24.04"),
    lambda t: t.replace("torch.version.cuda == base", "torch.version.cuda"),
    lambda t: _without_line(t, r"^COPY pyproject"),
    lambda t: t.replace('pip install "ray[default]==${RAY_VERSION}" /tmp/src', 'pip install "ray[default]"'),
    lambda t: _without_line(t, r"^USER "),
    lambda t: t + "\nUSER root\n",
    lambda t: _without_line(t, r"HF_HOME=/data/hf"),
    lambda t: t.replace("RUN csm-render --help", "RUN true"),
    lambda t: t + "\nCOPY . /app\n",
    lambda t: t + "\nCOPY models/csm-1b/model.safetensors /weights/\n",
    lambda t: t + "\nADD --chown=ray:ray hf_cache /data/hf\n",
], ids=["no-from", "no-cuda", "no-cuda-match", "no-copy", "no-install", "no-user", "root", "no-hf-home", "no-smoke", "copy-all",
        "copy-safetensors", "add-hf-cache"])
def test_dockerfile_check_fails(mutate):
    with pytest.raises(AssertionError):
        check_dockerfile(mutate(DOCKERFILE.read_text()))
