"""Reading a request: multipart files or JSON with base64 images, the same parameters either way."""

from __future__ import annotations

import base64
import binascii
import json

from fastapi import HTTPException, Request
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from .features import DTYPES, ENCODINGS, NORMALIZE, POOLS

HEATMAP_FORMATS = ("none", "values", "png", "overlay")
# base64url's two letters as standard base64 writes them, and line breaks and spaces dropped, in one pass
AS_STANDARD_BASE64 = str.maketrans("-_", "+/", " \t\r\n")


class JsonImages(BaseModel):
    """JSON form: `{"images": ["<base64>", ...], "layers": [...], ...}` (same parameters as the query)."""

    images: list[str] = Field(min_length=1, description="base64-encoded image files (JPEG, PNG, ...)")
    layers: list[str] | str | None = Field(
        None, description='a list, or comma-separated as in the query: "conv3,conv5"'
    )
    pool: str | None = None
    normalize: str | None = None
    encoding: str | None = None
    dtype: str | None = None
    heatmap: str | None = None

    model_config = {"extra": "forbid"}


FEATURE_OPTIONS = ("layers", "pool", "normalize", "encoding", "dtype")
SPOT_OPTIONS = ("heatmap",)


def _check(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise HTTPException(422, f"unknown {name} {value!r}; valid: {', '.join(allowed)}")
    return value


async def read_images(request: Request, max_files: int) -> tuple[list[tuple[str, bytes]], dict]:
    """[(name, bytes)] and the parameters found in a JSON body (query parameters are read by the route)."""
    content_type = request.headers.get("content-type", "").lower()  # media types ignore case
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=max_files, max_fields=32)
        except StarletteHTTPException as exc:
            if "Too many files" in str(exc.detail):
                raise HTTPException(413, f"too many files; at most {max_files} per request") from None
            raise HTTPException(400, f"malformed multipart body: {exc.detail}") from None
        except Exception as exc:  # noqa: BLE001 - python-multipart reports malformed bodies its own way
            raise HTTPException(400, f"malformed multipart body: {exc}") from None
        unknown = [k for k in form if k not in ("files", "file")]
        if unknown:
            raise HTTPException(
                422, f"unknown form fields {unknown}; send images as 'files' and options as query parameters"
            )
        uploads = [v for k, v in form.multi_items() if k in ("files", "file")]
        if not uploads:
            raise HTTPException(422, "no images: send one or more multipart fields named 'files'")
        if not all(isinstance(u, UploadFile) for u in uploads):
            raise HTTPException(422, "'files' must be file uploads, not text fields")
        if len(uploads) > max_files:
            raise HTTPException(413, f"{len(uploads)} files; at most {max_files} per request")
        return [(u.filename or f"files[{i}]", await u.read()) for i, u in enumerate(uploads)], {}
    if content_type.startswith("application/json"):
        try:
            body = JsonImages.model_validate(json.loads(await request.body()))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPException(400, f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise HTTPException(400, "body is JSON nested too deeply") from None
        except ValidationError as exc:
            if unknown := [".".join(map(str, e["loc"])) for e in exc.errors() if e["type"] == "extra_forbidden"]:
                valid = ", ".join(JsonImages.model_fields)
                raise HTTPException(422, f"unknown fields {unknown}; valid: {valid}") from None
            # without the input: a 1 MB base64 string sent where a list belongs is not echoed back
            raise HTTPException(
                422, exc.errors(include_url=False, include_context=False, include_input=False)
            ) from None
        if len(body.images) > max_files:
            raise HTTPException(413, f"{len(body.images)} images; at most {max_files} per request")
        images = [(f"images[{i}]", image_bytes(text, f"images[{i}]")) for i, text in enumerate(body.images)]
        options = body.model_dump(exclude={"images"}, exclude_none=True)
        return images, {k: v for k, v in options.items() if v not in ("", [])}  # blank = not given, as in the query
    raise HTTPException(415, "send multipart/form-data (field 'files') or application/json (base64 'images')")


def image_bytes(text: str, name: str) -> bytes:
    """A base64 image as browsers and tools write it too: a data URL (`data:image/png;base64,...`, what
    FileReader.readAsDataURL gives), wrapped in lines (the `base64` command), URL-safe, padding left off."""
    if text[:5].lower() == "data:":
        header, _, text = text.partition(",")
        if not header.lower().endswith(";base64"):
            raise HTTPException(400, f"{name} is a data URL without ';base64,': send the image base64-encoded")
    text = text.translate(AS_STANDARD_BASE64).rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HTTPException(400, f"{name} is not valid base64 ({exc})") from None


def query_options(request: Request, allowed: tuple[str, ...]) -> dict:
    """The route's options from the query string. A name it does not know (a typo such as `layer=conv5`)
    or one given twice is a 422, not silently ignored or overridden; `layers` may repeat
    (`layers=conv3&layers=conv5`, as `layers=conv3,conv5`)."""
    items = request.query_params.multi_items()
    if unknown := sorted({key for key, _ in items} - set(allowed)):
        raise HTTPException(422, f"unknown query parameters {unknown}; valid: {', '.join(allowed)}")
    options: dict[str, str] = {}
    for key, value in items:
        if key in options and key != "layers":
            raise HTTPException(422, f"{key} given twice in the query; give it once")
        options[key] = f"{options[key]},{value}" if key in options else value
    return {key: value for key, value in options.items() if value.strip(", ")}  # blank = not given


def merged_params(query: dict, body: dict, allowed: tuple[str, ...]) -> dict:
    """The query's and the JSON body's options together; one given in both is a 422, not a silent pick,
    and so is a JSON option of the other route (`heatmap` sent to /features)."""
    if foreign := sorted(set(body) - set(allowed)):
        raise HTTPException(
            422, f"{', '.join(foreign)}: not an option of this route; its options: {', '.join(allowed)}"
        )
    if twice := sorted(set(query) & set(body)):
        raise HTTPException(422, f"{', '.join(twice)} given both in the query and in the JSON body; give each once")
    return {**query, **body}


def feature_params(query: dict, body: dict, layers: list[str], default_layer: str) -> dict:
    merged = merged_params(query, body, FEATURE_OPTIONS)
    chosen = merged.get("layers") or []
    if isinstance(chosen, str):
        chosen = chosen.split(",")
    chosen = list(dict.fromkeys(s.strip() for s in chosen if s.strip())) or [default_layer]  # none: the default
    bad = [layer for layer in chosen if layer not in layers]
    if bad:
        raise HTTPException(422, f"unknown layers {bad}; valid: {', '.join(layers)}")
    return {
        "layers": chosen,
        "pool": _check("pool", merged.get("pool") or "avg", POOLS),
        "normalize": _check("normalize", merged.get("normalize") or "none", NORMALIZE),
        "encoding": _check("encoding", merged.get("encoding") or "json", ENCODINGS),
        "dtype": _check("dtype", merged.get("dtype") or "float32", DTYPES),
    }


def spot_params(query: dict, body: dict) -> dict:
    merged = merged_params(query, body, SPOT_OPTIONS)
    return {"heatmap": _check("heatmap", merged.get("heatmap") or "values", HEATMAP_FORMATS)}
