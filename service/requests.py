"""Reading a request: multipart files or JSON with base64 images, the same parameters either way."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fastapi import Request
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import ClientDisconnect

from . import multipart
from .features import DTYPES, ENCODINGS, NORMALIZE, POOLS
from .runtime import ServiceError

HEATMAP_FORMATS = ("none", "values", "png", "overlay")
# base64url's two letters as standard base64 writes them, and line breaks and spaces dropped, in one pass
AS_STANDARD_BASE64 = str.maketrans("-_", "+/", " \t\r\n")


def choice(values: tuple[str, ...], default: str, note: str = "") -> Any:
    """An option that takes one of `values`; blank or left out = `default`. Checked by `checked` (a clear 422
    naming the valid ones), not by pydantic, whose message would not."""
    description = f"{' | '.join(values)} (default: {default}){note}"
    return Field(None, description=description, json_schema_extra={"choices": values})


def checked(name: str, value: str | None, allowed: tuple[str, ...], default: str) -> str:
    value = value or default
    if value not in allowed:
        raise ServiceError(422, f"unknown {name} {value!r}; valid: {', '.join(allowed)}")
    return value


class FeatureOptions(BaseModel):
    """/features' options, in the query or the JSON body (each in one of them)."""

    layers: list[str] | str | None = Field(
        None,
        description='comma-separated or repeated in the query ("conv3,conv5"), a list or the same string in '
        "JSON (default: model.json's default_layer, GET /models)",
    )
    pool: str | None = choice(POOLS, "avg")
    normalize: str | None = choice(NORMALIZE, "none")
    encoding: str | None = choice(ENCODINGS, "json", "; base64: little-endian bytes")
    dtype: str | None = choice(DTYPES, "float32")

    def resolved(self, layers: list[str], default_layer: str) -> dict:
        chosen = self.layers or []
        if isinstance(chosen, str):
            chosen = chosen.split(",")
        chosen = list(dict.fromkeys(s.strip() for s in chosen if s.strip())) or [default_layer]  # none: the default
        if bad := [layer for layer in chosen if layer not in layers]:
            raise ServiceError(422, f"unknown layers {bad}; valid: {', '.join(layers)}")
        return {
            "layers": chosen,
            "pool": checked("pool", self.pool, POOLS, "avg"),
            "normalize": checked("normalize", self.normalize, NORMALIZE, "none"),
            "encoding": checked("encoding", self.encoding, ENCODINGS, "json"),
            "dtype": checked("dtype", self.dtype, DTYPES, "float32"),
        }


class SpotOptions(BaseModel):
    """/spot's options, in the query or the JSON body."""

    heatmap: str | None = choice(HEATMAP_FORMATS, "values", "; PNGs come base64-encoded")

    def resolved(self) -> dict:
        return {"heatmap": checked("heatmap", self.heatmap, HEATMAP_FORMATS, "values")}


class Images(BaseModel):
    images: list[str] = Field(
        min_length=1,
        description="base64-encoded image files (JPEG, PNG, ...)",
        json_schema_extra={"items": {"type": "string", "format": "byte"}},
    )

    model_config = {"extra": "forbid"}


class FeaturesJson(FeatureOptions, Images):
    """/features' JSON form: `{"images": ["<base64>", ...], "layers": [...], ...}`."""


class SpotJson(SpotOptions, Images):
    """/spot's JSON form: `{"images": ["<base64>", ...], "heatmap": "png"}`."""


JSON_FORMS: dict[type[BaseModel], type[Images]] = {FeatureOptions: FeaturesJson, SpotOptions: SpotJson}


async def read_images(request: Request, max_files: int, options: type[BaseModel]) -> tuple[list, dict]:
    """[(name, bytes)] and the options found in a JSON body (the query's are read by `query_options`)."""
    content_type = request.headers.get("content-type", "").lower()  # media types ignore case
    try:
        if content_type.startswith("multipart/form-data"):
            return await read_form(request, max_files), {}
        if content_type.startswith("application/json"):
            return await read_json(request, max_files, JSON_FORMS[options])
    except ClientDisconnect:
        raise client_gone() from None
    raise ServiceError(415, "send multipart/form-data (field 'files') or application/json (base64 'images')")


def client_gone() -> ServiceError:
    """A client that closed the connection mid-body: nobody reads the answer, but the log and the metrics say
    what happened (a 400), without a 500's traceback."""
    return ServiceError(400, "the client closed the connection before sending the whole body")


async def read_form(request: Request, max_files: int) -> list[tuple[str, bytes]]:
    """The images of the multipart fields named `files`; any other field is a 422, not ignored."""
    try:
        reader = multipart.Reader(request.headers["content-type"], max_files, max_fields=32)
        async for chunk in request.stream():
            reader.write(chunk)
        parts = reader.finish()
    except multipart.TooManyFiles:
        raise ServiceError(413, f"too many files; at most {max_files} per request") from None
    except multipart.MultipartError as exc:
        raise ServiceError(400, f"malformed multipart body: {exc}") from None
    if unknown := list(dict.fromkeys(p.name for p in parts if p.name != "files")):
        raise ServiceError(
            422, f"unknown form fields {unknown}; send images as 'files' and options as query parameters"
        )
    if not parts:
        raise ServiceError(422, "no images: send one or more multipart fields named 'files'")
    if any(p.filename is None for p in parts):
        raise ServiceError(422, "'files' must be file uploads, not text fields")
    return [(p.filename or f"files[{i}]", bytes(p.data)) for i, p in enumerate(parts)]


async def read_json(request: Request, max_files: int, form: type[Images]) -> tuple[list, dict]:
    """The base64 images of a JSON body and the route's options beside them (`form`: the route's JSON model,
    so an unknown key is a 422 that lists this route's options)."""
    try:
        body = form.model_validate(json.loads(await request.body()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ServiceError(400, f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ServiceError(400, "body is JSON nested too deeply") from None
    except ValidationError as exc:
        if unknown := [".".join(map(str, e["loc"])) for e in exc.errors() if e["type"] == "extra_forbidden"]:
            raise ServiceError(422, f"unknown fields {unknown}; valid: {', '.join(form.model_fields)}") from None
        # without the input: a 1 MB base64 string sent where a list belongs is not echoed back
        raise ServiceError(422, exc.errors(include_url=False, include_context=False, include_input=False)) from None
    if len(body.images) > max_files:
        raise ServiceError(413, f"{len(body.images)} images; at most {max_files} per request")
    images = [(f"images[{i}]", image_bytes(text, f"images[{i}]")) for i, text in enumerate(body.images)]
    options = body.model_dump(exclude={"images"}, exclude_none=True)
    return images, {k: v for k, v in options.items() if v not in ("", [])}  # blank = not given, as in the query


def image_bytes(text: str, name: str) -> bytes:
    """A base64 image as browsers and tools write it too: a data URL (`data:image/png;base64,...`, what
    FileReader.readAsDataURL gives), wrapped in lines (the `base64` command), URL-safe, padding left off."""
    if text[:5].lower() == "data:":
        header, _, text = text.partition(",")
        if not header.lower().endswith(";base64"):
            raise ServiceError(400, f"{name} is a data URL without ';base64,': send the image base64-encoded")
    text = text.translate(AS_STANDARD_BASE64).rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ServiceError(400, f"{name} is not valid base64 ({exc})") from None


def query_options(request: Request, options: type[BaseModel]) -> dict:
    """The route's options from the query string. A name it does not know (a typo such as `layer=conv5`)
    or one given twice is a 422, not silently ignored or overridden; `layers` may repeat
    (`layers=conv3&layers=conv5`, as `layers=conv3,conv5`)."""
    items, allowed = request.query_params.multi_items(), list(options.model_fields)
    if unknown := sorted({key for key, _ in items} - set(allowed)):
        raise ServiceError(422, f"unknown query parameters {unknown}; valid: {', '.join(allowed)}")
    found: dict[str, str] = {}
    for key, value in items:
        if key in found and key != "layers":
            raise ServiceError(422, f"{key} given twice in the query; give it once")
        found[key] = f"{found[key]},{value}" if key in found else value
    return {key: value for key, value in found.items() if value.strip(", ")}  # blank = not given


def merged_options(query: dict, body: dict, options: type[BaseModel]):
    """The query's and the JSON body's options as the route's model; one given in both is a 422, not a
    silent pick."""
    if twice := sorted(set(query) & set(body)):
        raise ServiceError(422, f"{', '.join(twice)} given both in the query and in the JSON body; give each once")
    return options.model_validate({**query, **body})


def inline_refs(schema: dict) -> dict:
    """A pydantic schema with its $defs written in place: OpenAPI has no home for them in openapi_extra."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict) and "$ref" in node:
            return walk(defs[node["$ref"].rsplit("/", 1)[1]])
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    return walk(schema)


def query_parameter(name: str, field) -> dict:
    extra = field.json_schema_extra or {}
    if "choices" in extra:
        schema = {"type": "string", "enum": list(extra["choices"])}
    elif name == "layers":  # repeated, or comma-separated in one
        schema = {"type": "array", "items": {"type": "string"}}
    else:
        schema = {"type": "string"}
    return {"name": name, "in": "query", "required": False, "description": field.description, "schema": schema}


def documented(options: type[BaseModel]) -> dict:
    """The route's query parameters and its two body forms for the OpenAPI schema (the route reads them itself:
    FastAPI would ignore an unknown option and keep the last of one given twice)."""
    multipart = {
        "type": "object",
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
        "required": ["files"],
    }
    json_form = inline_refs(JSON_FORMS[options].model_json_schema())
    for field in json_form["properties"].values():
        field.pop("choices", None)
    return {
        "parameters": [query_parameter(name, field) for name, field in options.model_fields.items()],
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": multipart}, "application/json": {"schema": json_form}},
        },
    }
