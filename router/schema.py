"""The JSON Schema of ``router.yaml``, generated from the typed config.

msgspec draws it from the Structs of :mod:`router.config`; this module adds what the Structs
leave to later checks: tier names as the only keys of ``tiers``, each rule as a
:class:`~router.config.RuleConfig`, and a ``when`` condition whose keys are the features of
:class:`~router.routing.features.Features` with values of their kind. Every field's docstring
becomes its ``description``, so an editor shows it on hover. The same schema ships as
``router/router.schema.json`` (a test keeps it equal to :func:`config_schema`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from router import config
from router.attrdocs import attribute_docs
from router.config import TIERS, Config, RuleConfig
from router.routing.features import Features, feature_docs
from router.routing.rules import Kind, feature_kinds

SCHEMA_FILE = "router.schema.json"
"""Its name inside the package, next to ``default.yaml``."""
DIALECT = "https://json-schema.org/draft/2020-12/schema"

_SCALAR: dict[Kind, dict[str, Any]] = {
    "number": {"type": "number"},
    "bool": {"type": "boolean"},
    "string": {"type": "string"},
    "strings": {"type": "string"},
}
_OPERATORS: dict[Kind, tuple[str, ...]] = {
    "number": ("eq", "ne", "lt", "lte", "gt", "gte"),
    "bool": ("eq", "ne"),
    "string": ("eq", "ne", "glob"),
    "strings": ("eq", "ne", "glob"),
}


def config_schema() -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) that a valid ``router.yaml`` satisfies."""
    (root, _), defs = msgspec.json.schema_components([Config, RuleConfig],
                                                     ref_template="#/$defs/{name}")
    for name, definition in defs.items():
        struct = getattr(config, name, None)
        docs = attribute_docs(struct) if isinstance(struct, type) else {}
        for field, schema in definition.get("properties", {}).items():
            if field in docs:
                schema["description"] = docs[field]
    top = defs["Config"]["properties"]
    top["tiers"]["propertyNames"] = {"enum": list(TIERS)}
    top["rules"]["items"] = {"$ref": "#/$defs/RuleConfig"}
    defs["RuleConfig"]["properties"]["when"] |= {"anyOf": [{"$ref": "#/$defs/When"},
                                                          {"type": "null"}]}
    defs.update(_condition_defs())
    return {"$schema": DIALECT, "title": "router.yaml", **root, "$defs": defs}


def _condition_defs() -> dict[str, Any]:
    """``When``: a mapping of feature tests and combinators, as router.routing.rules compiles."""
    kinds = feature_kinds(Features)
    docs = feature_docs()
    properties: dict[str, Any] = {
        "all": {"type": "array", "items": {"$ref": "#/$defs/When"},
                "description": "Every condition of the list holds."},
        "any": {"type": "array", "items": {"$ref": "#/$defs/When"},
                "description": "At least one condition of the list holds."},
        "not": {"$ref": "#/$defs/When", "description": "The condition does not hold."},
    }
    for feature, kind in kinds.items():
        properties[feature] = {"$ref": f"#/$defs/Test_{kind}"}
        if feature in docs:
            properties[feature]["description"] = docs[feature]
    defs: dict[str, Any] = {
        "When": {
            "description": "Conditions on the request's features; several keys must all hold.",
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        },
    }
    for kind, scalar in _SCALAR.items():
        options = {"type": "array", "items": scalar, "minItems": 1}
        operators = {op: scalar for op in _OPERATORS[kind]} | {"in": options, "not_in": options}
        defs[f"Test_{kind}"] = {"anyOf": [
            scalar,
            options,
            {"type": "object", "properties": operators, "additionalProperties": False,
             "minProperties": 1},
        ]}
    return defs
