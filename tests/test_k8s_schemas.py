"""Every object in k8s/ against its API schema, strictly (an unknown field is an error):
core kinds against the Kubernetes OpenAPI schemas kubernetes-validate bundles, at the oldest
Kubernetes the manifests support and the newest the package knows; SparkApplication and
RayJob against the operators' CRD schemas vendored in k8s/schemas/ (README.md there)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from functools import cache

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.test_k8s import K8S, ROOT, manifests, objects

# podFailurePolicy and the Job's SuccessCriteriaMet condition (daily.py) are GA from 1.31
OLDEST_KUBERNETES = "1.31"
NEWEST_KUBERNETES = kubernetes_validate.utils.latest_version()
SCHEMAS = K8S / "schemas"
CUSTOM = {  # (apiVersion, kind) -> vendored strict JSON schema
    ("sparkoperator.k8s.io/v1beta2", "SparkApplication"): "sparkapplication-sparkoperator-v1beta2.json",
    ("ray.io/v1", "RayJob"): "rayjob-ray-v1.json",
}
# A field misspelt deep inside each kind: (path to the mapping that holds it, field, typo).
TYPOS = {
    "Namespace": ("metadata", "labels", "lables"),
    "ServiceAccount": ("", "metadata", "metdata"),
    "Role": ("rules.0", "apiGroups", "apiGroup"),
    "RoleBinding": ("roleRef", "apiGroup", "apiGrup"),
    "ConfigMap": ("", "data", "dta"),
    "PersistentVolumeClaim": ("spec", "accessModes", "accesModes"),
    "NetworkPolicy": ("spec", "podSelector", "podSelecter"),
    "CronJob": ("spec.jobTemplate.spec.template.spec.containers.0", "securityContext", "securityContex"),
    "Job": ("spec.template.spec.initContainers.0.securityContext", "runAsNonRoot", "runAsNonroot"),
    "SparkApplication": ("spec.driver", "memoryOverhead", "memoryOverHead"),
    "RayJob": ("spec.rayClusterSpec.workerGroupSpecs.0.template.spec.containers.0", "volumeMounts",
               "volumeMount"),
}


@cache
def custom_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / CUSTOM[api_version, kind]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(obj: dict, kubernetes: str) -> list[str]:
    """Where and why ``obj`` breaks its schema; empty if it conforms."""
    key = (obj["apiVersion"], obj["kind"])
    if key not in CUSTOM:
        try:
            kubernetes_validate.validate(obj, kubernetes, strict=True)
        except kubernetes_validate.ValidationError as e:
            return [f"{'.'.join(map(str, e.path))}: {e.message}"]
        return []
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in custom_validator(*key).iter_errors(obj)]
    # A CRD schema leaves metadata open (the API server checks it as every object's
    # ObjectMeta): check it as such, carried by the simplest core kind.
    carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    return errors + schema_errors(carrier, kubernetes)


def named(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("kubernetes", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
@pytest.mark.parametrize("file", sorted(manifests()))
def test_every_manifest_matches_its_api_schema(file, kubernetes):
    for obj in manifests()[file]:
        assert schema_errors(obj, kubernetes) == [], f"{file} {named(obj)} (Kubernetes {kubernetes})"


def misspell(obj: dict, path: str, field: str, typo: str) -> dict:
    """A copy of ``obj`` with ``field`` of the mapping at dotted ``path`` renamed ``typo``."""
    mutated = copy.deepcopy(obj)
    node = mutated
    for step in filter(None, path.split(".")):
        node = node[int(step)] if isinstance(node, list) else node[step]
    assert field in node, f"{named(obj)}: {path or 'the top'} has no {field}"
    node[typo] = node.pop(field)
    return mutated


@pytest.mark.parametrize("obj", objects(), ids=named)
def test_a_misspelt_field_fails_in_every_object(obj):
    assert obj["kind"] in TYPOS, f"add a misspelt field for {obj['kind']} to TYPOS"
    for path, field, typo in (TYPOS[obj["kind"]], ("metadata", "name", "nmae")):
        errors = schema_errors(misspell(obj, path, field, typo), NEWEST_KUBERNETES)
        assert any(f"'{typo}' was unexpected" in e for e in errors), f"{named(obj)}: {typo} passed: {errors}"


def test_schemas_come_from_the_operator_versions_the_docs_name():
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    readme = (SCHEMAS / "README.md").read_text()
    for (api_version, kind), file in CUSTOM.items():
        comment = json.loads((SCHEMAS / file).read_text())["$comment"]
        source_version = comment.split("/blob/")[1].split("/")[0]
        assert f"`{api_version}`" in docs and source_version in docs, \
            f"docs/kubernetes.md: {kind} {source_version}"
        assert file in readme and source_version in readme, f"k8s/schemas/README.md: {file}"


def test_crd_conversion_refuses_unknown_fields_except_where_the_crd_keeps_them(tmp_path):
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "things.example.com"},
           "spec": {"group": "example.com", "names": {"kind": "Thing"}, "versions": [{
               "name": "v1", "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                   "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                   "metadata": {"type": "object"},
                   "spec": {"type": "object", "description": "d", "properties": {
                       "port": {"anyOf": [{"type": "integer"}, {"type": "string"}],
                                "x-kubernetes-int-or-string": True},
                       "when": {"type": "string", "nullable": True},
                       "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                       "template": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                   }}}}}}]}}
    path = tmp_path / "crd.yaml"
    path.write_text(yaml.safe_dump(crd))
    convert = [sys.executable, str(SCHEMAS / "crd_to_jsonschema.py"), str(path)]
    made = subprocess.run([*convert, "v1", "here"], capture_output=True, text=True, check=True)
    validator = jsonschema.Draft202012Validator(json.loads(made.stdout))
    good = {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "a"},
            "spec": {"port": "http", "when": None, "labels": {"any": "x"}, "template": {"anything": 1}}}
    assert list(validator.iter_errors(good)) == []
    for bad in ({**good, "sepc": {}}, {**good, "spec": {**good["spec"], "prot": 1}},
                {**good, "kind": "Other"}, {**good, "apiVersion": "example.com/v2"},
                {**good, "spec": {**good["spec"], "port": 1.5}}):
        assert list(validator.iter_errors(bad)), bad
    wrong_version = subprocess.run([*convert, "v9", "x"], capture_output=True, text=True)
    assert wrong_version.returncode != 0 and "has no version 'v9'" in wrong_version.stderr
