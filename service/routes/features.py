"""POST /features: the trunk's feature maps, pooled, normalised and encoded as asked."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from contract.views import centre_view

from ..answers import FeaturesAnswer
from ..features import encode, normalize, pool
from ..images import to_array
from ..requests import FeatureOptions, documented, merged_options, read_images
from ..runtime import Work
from . import json_answer, opened, pixels

router = APIRouter()


@router.post(
    "/features",
    tags=["inference"],
    openapi_extra=documented(FeatureOptions),
    response_model=None,
    responses={200: {"model": FeaturesAnswer}},
)
async def features(request: Request) -> Response:
    runtime, model, query = opened(request, FeatureOptions)

    async def prepare() -> Work:
        files, body = await read_images(request, runtime.settings.max_files, FeatureOptions)
        images = runtime.open_images(files)
        options = merged_options(query, body, FeatureOptions).resolved(model.layers, model.default_layer)

        def views():
            return model.normalize_batch(
                [centre_view(to_array(img, name), model.size, model.crop_fraction) for name, img in images]
            )

        batch = await runtime.offload(pixels(images), views, "preprocess")
        return Work(batch, options["layers"], len(images), (images, options))

    answer = await runtime.infer("/features", prepare)
    images, options = answer.work.context
    outputs, layers = answer.outputs, options["layers"]

    def encoded() -> Response:
        probe, results = model.meta["probe_pooling"], []
        for i, (name, _) in enumerate(images):
            per_layer = {}
            for layer in layers:
                pooled = pool(outputs[layer][i], options["pool"], probe[layer]["grid"])
                values = normalize(pooled, options["normalize"])
                per_layer[layer] = {
                    "shape": list(values.shape),
                    "values": encode(values, options["encoding"], options["dtype"]),
                }
            results.append({"name": name, "features": per_layer})
        rest = {k: v for k, v in options.items() if k != "layers"}
        return json_answer({"model": model.name, "version": model.version, "provider": model.provider,
                            **rest, "inference_ms": answer.inference_ms, "results": results})  # fmt: skip

    # unpooled maps of many images make a large answer: encoded on a thread, as a large image is decoded
    values = len(images) * sum(outputs[layer][0].size for layer in layers) if options["pool"] == "none" else 0
    return await runtime.offload(values, encoded, "postprocess")
