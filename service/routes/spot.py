"""POST /spot: each image tiled, every tile through the heads, and the tiles' answers assembled into one
score, a mask and a heatmap over the whole image (service/spot.py)."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from PIL import Image

from contract.views import analysis_size, tile_count, tiles

from .. import spot
from ..answers import SpotAnswer
from ..images import to_array
from ..model import HEAD_OUTPUTS, ExportedModel
from ..requests import SpotOptions, documented, merged_options, read_images
from ..runtime import Runtime, ServiceError, Work
from . import json_answer, opened, pixels

router = APIRouter()


def check_heatmap_size(runtime: Runtime, heatmap: str, own_pixels: int) -> None:
    """A PNG of a few kB can be 7000 x 7000: 49 M values, too many to send as numbers."""
    most = runtime.settings.max_heatmap_values
    if heatmap == "values" and most and own_pixels > most:
        raise ServiceError(
            413,
            f"heatmap=values for {own_pixels} pixels exceeds the limit of {most} per request: ask for "
            "heatmap=png or overlay (or none: the mask is still there), or send fewer images per request",
        )


def tile_limit(runtime: Runtime) -> int:
    s = runtime.settings
    return min((n for n in (s.max_tiles, s.max_queue_images) if n > 0), default=0)


def analysed_pixels(runtime: Runtime, model: ExportedModel, images: list[tuple[str, Image.Image]]) -> int:
    """The pixels the images are tiled at. A photo over the tile limit is analysed downscaled to fit it;
    what cannot fit is refused from the image headers, before anything is decoded."""
    limit, counts, analysed = tile_limit(runtime), [], 0
    for name, img in images:
        h, w = analysis_size(img.height, img.width, model.size, limit, model.zoom)
        counts.append(tile_count(h, w, model.size))
        analysed += h * w
        if limit and counts[-1] > limit:  # too long and thin to fit at any size
            raise ServiceError(413, f"{name}: {counts[-1]} tiles even at {w}x{h} exceed the limit of {limit}")
    runtime.check_queue_room(sum(counts))
    return analysed


def tiled(model: ExportedModel, images: list[tuple[str, Image.Image]], limit: int) -> tuple[list, np.ndarray]:
    """Per image (name, rgb, tiles, their positions, the covered image), and every tile in one batch."""
    per_image = []
    for name, img in images:
        rgb = to_array(img, name)
        t, positions, covered = tiles(rgb, model.size, limit, model.zoom)
        per_image.append((name, rgb, t, positions, covered))
    return per_image, np.concatenate([model.normalize_batch(t) for _, _, t, _, _ in per_image])


@router.post(
    "/spot",
    tags=["inference"],
    openapi_extra=documented(SpotOptions),
    response_model=None,
    responses={200: {"model": SpotAnswer}},
)
async def spot_route(request: Request) -> Response:
    runtime, model, query = opened(request, SpotOptions)

    async def prepare() -> Work:
        files, body = await read_images(request, runtime.settings.max_files, SpotOptions)
        images = runtime.open_images(files)
        heatmap = merged_options(query, body, SpotOptions).resolved()["heatmap"]
        check_heatmap_size(runtime, heatmap, pixels(images))
        # the work grows with the image and with what it is tiled at (a 2 x 1025 strip: 64 x 32800)
        work = max(pixels(images), analysed_pixels(runtime, model, images))
        limit = tile_limit(runtime)
        per_image, batch = await runtime.offload(work, lambda: tiled(model, images, limit), "preprocess")
        return Work(batch, HEAD_OUTPUTS, len(images), (per_image, heatmap, work))

    answer = await runtime.infer("/spot", prepare)
    per_image, heatmap, work = answer.work.context
    settings = runtime.settings
    threshold = model.spec.spot_threshold if settings.threshold is None else settings.threshold

    def built() -> Response:
        results = spot.results(per_image, answer.outputs, heatmap, model.size, model.grid)
        for item in results:
            item["altered"] = item["artifact_score"] > threshold  # the decision, as CNNDetection's at 0.5
        return json_answer({"model": model.name, "version": model.version, "provider": model.provider,
                            "threshold": threshold, "results": results})  # fmt: skip

    # a heatmap at a large photo's own size is a large answer: built and encoded on a thread
    return await runtime.offload(work, built, "postprocess")
