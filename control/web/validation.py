"""Request checks shared by every blueprint, and the API's checks driven by the OpenAPI
document (``schemas/openapi.json``): one description of the API, enforced as written.

Both use ``control.core.validation`` for what a value may hold, so the UI, the API and the
CLI refuse the same things with the same words.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema
from flask import Request
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from control.core import validation
from control.core.config import load_schema
from control.core.errors import ValidationError

DOC_URI = "urn:hushgate:openapi"
MAX_QUERY_VALUE = 2000
TYPE_NAMES = {"string": "a string", "integer": "an integer", "boolean": "a boolean",
              "array": "an array", "object": "an object", "number": "a number"}

# JSON Schema counts 1.0 as an integer; an amount of money must be an integer token.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _c, v: isinstance(v, int) and not isinstance(v, bool)))


class BadRequest(ValidationError):
    """Input that isn't even the right shape (HTTP 400 rather than 422)."""

    code = "bad_request"


def check_request(request: Request) -> None:
    """Refuse, for every page and API call, text no database can store: in the path, the
    query string and form fields (keys and values)."""
    validation.check_text(request.path, "path")
    for source, values in (("query", request.args), ("form", request.form)):
        for key, value in values.items(multi=True):
            validation.check_text(key, source)
            validation.check_text(value, key, MAX_QUERY_VALUE)


@cache
def _spec() -> tuple[dict[str, Any], Registry]:
    doc = load_schema("openapi.json")
    registry = Registry().with_resource(DOC_URI, Resource(contents=doc,
                                                          specification=DRAFT202012))
    return doc, registry


def _resolve(obj: dict[str, Any]) -> dict[str, Any]:
    doc, _ = _spec()
    ref = obj.get("$ref")
    if not ref:
        return obj
    node: Any = doc
    for part in ref.lstrip("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node  # type: ignore[no-any-return]


def _openapi_path(rule: str) -> str:
    """``/api/v1/accounts/<account_id>`` -> ``/api/v1/accounts/{account_id}``."""
    out = []
    for part in rule.split("/"):
        if part.startswith("<") and part.endswith(">"):
            part = "{" + part[1:-1].split(":")[-1] + "}"
        out.append(part)
    return "/".join(out)


@cache
def _operation(rule: str, method: str) -> tuple[list[dict[str, Any]], Any, bool] | None:
    doc, registry = _spec()
    item = doc["paths"].get(_openapi_path(rule))
    if item is None or method.lower() not in item:
        return None
    op = item[method.lower()]
    params = [_resolve(p) for p in [*item.get("parameters", []), *op.get("parameters", [])]]
    body = op.get("requestBody")
    validator = None
    required = False
    if body is not None:
        schema = body["content"]["application/json"]["schema"]
        if "$ref" in schema:
            schema = {"$ref": DOC_URI + schema["$ref"]}
        validator = _Validator(schema, registry=registry)
        required = bool(body.get("required"))
    return params, validator, required


def _field_error(error: jsonschema.ValidationError) -> dict[str, str]:
    where = ".".join(str(p) for p in error.absolute_path)
    v, value = error.validator, error.validator_value
    if v == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return {(f"{where}.{e}" if where else e): "unknown field" for e in extra}
    if v == "required":
        missing = [r for r in value if r not in error.instance]
        return {(f"{where}.{m}" if where else m): "required" for m in missing}
    if v == "type":
        types = [t for t in (value if isinstance(value, list) else [value]) if t != "null"]
        message = "must be " + " or ".join(TYPE_NAMES.get(t, t) for t in types)
    elif v == "maxLength":
        message = f"at most {value} characters"
    elif v == "minLength":
        message = f"at least {value} characters"
    elif v in ("minimum", "maximum"):
        message = f"must be {'at least' if v == 'minimum' else 'at most'} {value}"
    elif v == "enum":
        message = "must be one of " + ", ".join(str(x) for x in value)
    else:
        message = "is invalid"
    return {where or "body": message}


def _check_query(params: list[dict[str, Any]], request: Request) -> None:
    for p in params:
        raw = request.args.get(p["name"]) if p.get("in") == "query" else None
        if raw is None or raw == "":
            continue
        schema = p.get("schema", {})
        if schema.get("type") == "integer":
            try:
                validation.parse_int(raw, p["name"], minimum=schema.get("minimum", 0),
                                     maximum=min(schema.get("maximum", validation.INT64_MAX),
                                                 validation.INT64_MAX))
            except ValidationError as exc:
                raise BadRequest(str(exc), p["name"]) from None
        elif schema.get("maxLength") and len(raw) > schema["maxLength"]:
            raise BadRequest(f"{p['name']} is too long", p["name"])


def check_api_request(request: Request) -> Any:
    """Validate an API call against its operation in ``openapi.json``: query parameters by
    their schema, and the JSON body (parsed with ``control.core.validation``) against the
    request body schema. Returns the body (``{}`` when there is none)."""
    rule = request.url_rule.rule if request.url_rule is not None else None
    spec = _operation(rule, request.method) if rule else None
    if spec is None:
        return {}
    params, validator, required = spec
    _check_query(params, request)
    if validator is None:
        return {}
    raw = request.get_data(cache=True)
    if not raw.strip():
        if required:
            raise BadRequest("a JSON body is required", "body")
        return {}
    try:
        data = validation.parse_json(raw)
    except ValidationError as exc:
        raise BadRequest(str(exc), exc.field) from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object", "body")
    fields: dict[str, str] = {}
    for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
        for name, message in _field_error(error).items():
            fields.setdefault(name, message)
    if fields:
        raise InvalidBody(fields)
    return data


class InvalidBody(ValidationError):
    """The body breaks the operation's schema: HTTP 422 with one message per field."""

    code = "invalid_request"

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("the request body is invalid", next(iter(fields)))
        self.fields = fields
