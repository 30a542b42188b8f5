"""Every KubeRay object in infra/kuberay/ against the CRD schemas of the minimum supported KubeRay (v1.6.0, shipped
in tests/infra/schemas/), as that cluster's API server would check it, and stricter in one way: a field the
structural schema does not declare fails here, because the API server would silently drop it (a misspelt or
misplaced field then has no effect and no error)."""

from __future__ import annotations

import copy
import gzip
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "infra" / "kuberay"
VERSION = "v1.6.0"
SCHEMAS = Path(__file__).parent / "schemas" / f"kuberay-{VERSION}"
KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayCronJob": "raycronjobs"}
# The C loader reads the ~1 MB CRDs in a fraction of the pure-Python loader's time.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ---------------------------------------------------------------------------------------------- the schemas

@cache
def crd(kind: str) -> dict:
    return yaml.load(gzip.decompress((SCHEMAS / f"ray.io_{KINDS[kind]}.yaml.gz").read_bytes()), Loader=LOADER)


@cache
def validator(kind: str) -> jsonschema.Draft7Validator:
    version = next(v for v in crd(kind)["spec"]["versions"] if v["name"] == "v1")
    schema = strict(version["schema"]["openAPIV3Schema"])
    # The root metadata is only `type: object` (the API server checks ObjectMeta itself): check the name loosely.
    schema["properties"]["metadata"] = {"type": "object", "properties": {
        "name": {"type": "string"}, "generateName": {"type": "string"}}}
    return jsonschema.Draft7Validator(schema)


def strict(node):
    """A Kubernetes structural schema as plain JSON schema. Undeclared fields are rejected wherever properties
    are declared and unknown fields are not preserved, since the API server prunes them there."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


# ---------------------------------------------------------------------------------------------- the objects

def ray_objects() -> list[tuple[str, dict]]:
    """Each ray.io object under infra/kuberay with where it is: the files' own documents, and the manifests a
    ConfigMap holds as YAML text (the RayJob that cronjob-kubectl.yaml's CronJob creates with kubectl)."""
    found = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        where = str(path.relative_to(ROOT))
        for doc in yaml.safe_load_all(path.read_text()):
            found += [(where, doc)]
            if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                found += embedded(where, doc)
    return [(where, doc) for where, doc in found if isinstance(doc, dict)
            and str(doc.get("apiVersion", "")).startswith("ray.io/")]


def embedded(where: str, configmap: dict) -> list[tuple[str, dict]]:
    label = f"{where} (ConfigMap {configmap['metadata']['name']} data.%s)"
    return [(label % key, doc) for key, text in (configmap.get("data") or {}).items()
            if key.endswith((".yaml", ".yml")) for doc in yaml.safe_load_all(text)]


def name_of(doc: dict) -> str:
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    return meta.get("name") or meta.get("generateName") or "(no name)"


def problems(where: str, doc: dict) -> list[str]:
    """One line per error: file, object and the JSON path of the field at fault."""
    head = f"{where}: {doc.get('kind')} {name_of(doc)}"
    if doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") not in KINDS:
        return [f"{head}: apiVersion/kind: not one of ray.io/v1 {sorted(KINDS)}"]
    found = [f"{head}: {line}" for error in validator(doc["kind"]).iter_errors(doc) for line in describe(error)]
    if not isinstance(doc.get("metadata"), dict) or not {"name", "generateName"} & set(doc["metadata"]):
        found.append(f"{head}: metadata: has neither name nor generateName")
    return found


def describe(error: jsonschema.ValidationError) -> list[str]:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        # Name each undeclared field by its own path, not its parent's.
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return [f"{dotted(path + [key])}: unknown field (the API server would drop it)" for key in extra]
    return [f"{dotted(path) or '(top)'}: {error.message}"]


def dotted(path: list) -> str:
    return ".".join(map(str, path))


# ---------------------------------------------------------------------------------------------- the files

def test_every_kuberay_object_is_found():
    objects = ray_objects()
    assert {doc["kind"] for _, doc in objects} == set(KINDS)
    assert any("cronjob-kubectl.yaml (ConfigMap" in where and doc["kind"] == "RayJob" for where, doc in objects), \
        "the RayJob that the kubectl CronJob creates (kept in its ConfigMap) is checked too"


def case_id(where: str, doc: dict) -> str:
    return f"{where.removeprefix('infra/kuberay/').split(' (')[0]}{'+configmap' * ('(' in where)}:{doc.get('kind')}"


@pytest.mark.parametrize("where,doc", ray_objects(), ids=[case_id(w, d) for w, d in ray_objects()])
def test_matches_the_crd_schema_of_kuberay_1_6(where, doc):
    assert problems(where, doc) == []


# ---------------------------------------------------------------------------------------------- the checker

def rayjob() -> dict:
    return copy.deepcopy(next(doc for where, doc in ray_objects() if where == "infra/kuberay/rayjob.yaml"))


def head_container(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def test_an_undeclared_field_is_named_with_its_path():
    doc = rayjob()
    head_container(doc)["imagePullPolicyy"] = "Always"
    doc["spec"]["rayClusterSpec"]["headGroupSpec"]["foo"] = 1
    prefix = "infra/kuberay/rayjob.yaml: RayJob csm-render-job1: spec.rayClusterSpec.headGroupSpec."
    drop = ": unknown field (the API server would drop it)"
    assert sorted(problems("infra/kuberay/rayjob.yaml", doc)) == [
        f"{prefix}foo{drop}", f"{prefix}template.spec.containers.0.imagePullPolicyy{drop}"]


def test_a_wrong_type_or_value_is_named():
    doc = rayjob()
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "four"
    doc["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "password"
    found = problems("infra/kuberay/rayjob.yaml", doc)
    assert any("spec.rayClusterSpec.workerGroupSpecs.0.replicas: 'four' is not of type 'integer'" in p
               for p in found), found
    assert any("spec.rayClusterSpec.authOptions.mode: 'password' is not one of" in p for p in found), found


def test_an_int_or_string_quantity_takes_either():
    doc = rayjob()
    head_container(doc)["resources"]["limits"]["cpu"] = 2
    head_container(doc)["resources"]["requests"]["cpu"] = "2"
    assert problems("infra/kuberay/rayjob.yaml", doc) == []
    head_container(doc)["resources"]["limits"]["cpu"] = [2]
    assert problems("infra/kuberay/rayjob.yaml", doc)


def test_metadata_needs_a_string_name():
    doc = rayjob()
    doc["metadata"]["name"] = 5
    assert any(": metadata.name: 5 is not of type 'string'" in p for p in problems("x.yaml", doc))
    del doc["metadata"]["name"]
    assert problems("x.yaml", doc) == ["x.yaml: RayJob (no name): metadata: has neither name nor generateName"]


def test_preserved_unknown_fields_stay_allowed():
    # The v1.6.0 CRDs have no such node, so the converter's handling of one is checked on a schema of its own.
    schema = strict({"type": "object", "properties": {
        "open": {"type": "object", "properties": {"a": {}}, "x-kubernetes-preserve-unknown-fields": True},
        "closed": {"type": "object", "properties": {"a": {}}}}})
    errors = list(jsonschema.Draft7Validator(schema).iter_errors({"open": {"b": 1}, "closed": {"b": 1}}))
    assert [list(e.absolute_path) for e in errors] == [["closed"]]


def test_the_schemas_are_kuberays_ray_io_crds_of_the_stated_version():
    assert SCHEMAS.name == "kuberay-v1.6.0" and (SCHEMAS.parent / "README.md").read_text().count(VERSION)
    for kind in KINDS:
        definition = crd(kind)
        assert definition["kind"] == "CustomResourceDefinition" and definition["spec"]["group"] == "ray.io"
        assert definition["spec"]["names"]["kind"] == kind
        assert "v1" in [v["name"] for v in definition["spec"]["versions"]]
        assert "controller-gen.kubebuilder.io/version" in definition["metadata"]["annotations"]
