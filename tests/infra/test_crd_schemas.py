"""Every KubeRay object in infra/kuberay/ against the CRD schemas of the minimum supported KubeRay (v1.6.0,
shipped in tests/infra/schemas/ with their version), as the API server would check it, and stricter in one way:
a field the structural schema does not declare fails here, because the API server would silently drop it (a
misspelt or misplaced field then simply has no effect)."""

from __future__ import annotations

import copy
import gzip
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from .test_manifests import k8s_objects

SCHEMAS = Path(__file__).parent / "schemas" / "kuberay-v1.6.0"
KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayCronJob": "raycronjobs"}


@cache
def crd(kind: str) -> dict:
    return yaml.safe_load(gzip.decompress((SCHEMAS / f"ray.io_{KINDS[kind]}.yaml.gz").read_bytes()))


@cache
def validator(kind: str) -> jsonschema.Draft7Validator:
    version = next(v for v in crd(kind)["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


def strict(node):
    """The structural schema as plain JSON schema: int-or-string allowed as either, and additionalProperties
    false wherever properties are declared and unknown fields are not preserved."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def problems(where: str, doc: dict) -> list[str]:
    name = (doc.get("metadata") or {}).get("name") or (doc.get("metadata") or {}).get("generateName")
    found = []
    for error in validator(doc["kind"]).iter_errors(doc):
        path = ".".join(map(str, error.absolute_path)) or "(top)"
        what = "unknown field (the API server would drop it)" if error.validator == "additionalProperties" \
            else error.message
        found.append(f"infra/kuberay/{where}: {doc['kind']} {name}: {path}: {what}")
    return found


def ray_objects() -> list[tuple[str, dict]]:
    return [(where, doc) for where, doc in k8s_objects() if doc.get("kind") in KINDS]


def test_every_kuberay_object_is_found():
    kinds = {doc["kind"] for _, doc in ray_objects()}
    assert kinds == set(KINDS), kinds
    assert any(":" in where for where, _ in ray_objects()), "the RayJob kept in the CronJob's ConfigMap is checked too"


@pytest.mark.parametrize("where,doc", ray_objects(), ids=[w for w, _ in ray_objects()])
def test_matches_the_crd_schema_of_kuberay_1_6(where, doc):
    assert problems(where, doc) == []


def rayjob() -> dict:
    return copy.deepcopy(next(doc for where, doc in ray_objects() if where == "rayjob.yaml"))


def head_container(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def test_an_undeclared_field_is_named_with_its_path():
    doc = rayjob()
    head_container(doc)["imagePullPolicyy"] = "Always"
    doc["spec"]["rayClusterSpec"]["authOption"] = {"mode": "token"}
    found = problems("rayjob.yaml", doc)
    assert len(found) == 2, found
    assert any("spec.rayClusterSpec.headGroupSpec.template.spec.containers.0: unknown field" in p for p in found)
    assert any(p.startswith("infra/kuberay/rayjob.yaml: RayJob csm-render-job1: spec.rayClusterSpec: unknown")
               for p in found)


def test_a_wrong_type_or_value_is_named():
    doc = rayjob()
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "four"
    doc["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "password"
    found = problems("rayjob.yaml", doc)
    assert any("workerGroupSpecs.0.replicas: 'four' is not of type 'integer'" in p for p in found), found
    assert any("authOptions.mode: 'password' is not one of" in p for p in found), found


def test_an_int_or_string_quantity_takes_either():
    doc = rayjob()
    head_container(doc)["resources"]["limits"]["cpu"] = 2
    head_container(doc)["resources"]["requests"]["cpu"] = "2"
    assert problems("rayjob.yaml", doc) == []
    head_container(doc)["resources"]["limits"]["cpu"] = [2]
    assert problems("rayjob.yaml", doc)


def test_the_schemas_are_kuberays_ray_io_crds():
    for kind in KINDS:
        definition = crd(kind)
        assert definition["kind"] == "CustomResourceDefinition" and definition["spec"]["group"] == "ray.io"
        assert definition["spec"]["names"]["kind"] == kind
        assert "controller-gen.kubebuilder.io/version" in definition["metadata"]["annotations"]
