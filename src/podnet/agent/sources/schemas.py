"""Schema checks for manifests: the Kubernetes OpenAPI schemas that ``kubernetes-validate`` ships
(offline, strict: unknown fields are errors), at one pinned Kubernetes version.

The package's own ``validate()`` re-reads and re-parses the whole definitions file (megabytes of
JSON) for every object it checks; a directory of a thousand pods would take seconds. Here each
kind's validator is compiled once and kept.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from kubernetes_validate import utils as kv  # type: ignore[import-untyped]
from referencing import Registry, Resource

# Pinned so that a package upgrade never changes what a directory means.
KUBERNETES_VERSION = "1.33"
_SCHEMA_DIR = f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict"
_MESSAGE_LIMIT = 200


@functools.cache
def _definitions() -> Any:
    return kv.schema_contents(f"{_SCHEMA_DIR}/_definitions.json", KUBERNETES_VERSION)


@functools.cache
def _validator(api_version: str, kind: str) -> Any:
    # The schema files are named <kind>-<group without domain>-<version>.json (core: <kind>-v1).
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = kv.schema_contents(f"{_SCHEMA_DIR}/{kind.lower()}-{api}.json", KUBERNETES_VERSION)
    registry: Registry[Any] = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(_definitions()) @ registry
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def schema_error(raw: Mapping[str, Any]) -> str | None:
    """None when ``raw`` matches its kind's schema, else "field.path: what is wrong"."""
    api_version, kind = raw.get("apiVersion"), raw.get("kind")
    try:
        validator = _validator(str(api_version), str(kind))
    except Exception as exc:  # a kind the schemas lack must not stop the directory
        return f"(object): no schema for {api_version}/{kind} at Kubernetes {KUBERNETES_VERSION}: {exc}"
    # The first error, as kubernetes-validate reports it.
    error = next(iter(validator.iter_errors(dict(raw))), None)
    if error is None:
        return None
    where = ".".join(str(p) for p in error.absolute_path) or "(object)"
    message = str(error.message)
    if len(message) > _MESSAGE_LIMIT:
        message = message[:_MESSAGE_LIMIT - 3] + "..."
    return f"{where}: {message}"
