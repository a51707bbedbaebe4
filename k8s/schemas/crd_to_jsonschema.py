"""Turn a CustomResourceDefinition's openAPIV3Schema into a strict JSON schema.

    python k8s/schemas/crd_to_jsonschema.py CRD.yaml VERSION SOURCE > KIND-GROUP-VERSION.json

What the API server would do with an unknown field (prune it, or refuse it under
``kubectl --validate=strict``) becomes a validation error here: every object that lists its
``properties`` gets ``additionalProperties: false`` unless the CRD keeps unknown fields
(``x-kubernetes-preserve-unknown-fields``). ``nullable`` becomes a null type. Descriptions,
defaults and the list/map markers are dropped (they do not constrain a manifest);
``x-kubernetes-validations`` (CEL rules) are dropped too: no JSON-schema validator runs them.
"""

from __future__ import annotations

import json
import sys

import yaml

DROPPED = {"description", "default", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
           "x-kubernetes-map-type", "x-kubernetes-validations", "x-kubernetes-int-or-string"}
SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf")


def strict(node: dict) -> dict:
    """A copy of the OpenAPI v3 schema ``node`` that refuses fields it does not name."""
    out = {k: v for k, v in node.items() if k not in DROPPED}
    if out.pop("nullable", False):
        out["type"] = [out["type"], "null"]
    if "properties" in out:
        out["properties"] = {name: strict(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in SUBSCHEMA_LISTS:
        if key in out:
            out[key] = [strict(sub) for sub in out[key]]
    return out


def convert(crd: dict, version: str, source: str) -> dict:
    """The strict JSON schema of ``version`` of the custom resource ``crd`` defines.

    Args:
        crd: the parsed CustomResourceDefinition.
        version: the served API version, e.g. ``v1beta2``.
        source: where the CRD came from (URL at a tag and commit), kept in ``$comment``.
    """
    if crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"not a CustomResourceDefinition: kind {crd.get('kind')!r}")
    found = [v for v in crd["spec"]["versions"] if v["name"] == version]
    if not found:
        names = [v["name"] for v in crd["spec"]["versions"]]
        raise ValueError(f"{crd['metadata']['name']} has no version {version!r} (it has {names})")
    schema = strict(found[0]["schema"]["openAPIV3Schema"])
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version}"}
    schema["properties"]["kind"] = {"const": kind}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$comment": f"{kind} {group}/{version}, made by k8s/schemas/crd_to_jsonschema.py from {source}",
            **schema}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    path, version, source = argv
    with open(path) as f:
        crd = yaml.safe_load(f)
    json.dump(convert(crd, version, source), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
