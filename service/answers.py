"""The answers' shapes, for /docs only: the routes write their JSON themselves (orjson, numpy arrays as they
are), so these models are never used to validate or serialize an answer."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Ready(BaseModel):
    ready: bool
    model: str
    version: str
    provider: str = Field(description="ONNX Runtime's execution provider, e.g. CPUExecutionProvider")
    padded_batch_size: int | None = Field(description="every run padded to this many images (GPU), else null")


class Served(BaseModel):
    model: str
    version: str
    provider: str


class LayerFeatures(BaseModel):
    shape: list[int]
    values: list | str = Field(description="numbers, nested as `shape`; or base64 of little-endian `dtype` bytes")


class ImageFeatures(BaseModel):
    name: str = Field(description="the file's name, or images[i] for JSON")
    features: dict[str, LayerFeatures] = Field(description="per layer asked for")


class FeaturesAnswer(Served):
    pool: str
    normalize: str
    encoding: str
    dtype: str
    inference_ms: float = Field(description="waiting for and running the model")
    results: list[ImageFeatures]


class Tiling(BaseModel):
    tiles: int
    tile_size: int
    stride: int
    scaled_to: list[int] = Field(description="[width, height] of the image as tiled: the mask's pixels")
    scale: float = Field(description="< 1: a large image analysed downscaled (SPOT_MAX_TILES); > 1: scaled up")


class Mask(BaseModel):
    rows: int
    cols: int
    cell_pixels: int
    values: list[list[float]] = Field(description="per cell of the tiled image: how likely it was altered")


class Heatmap(BaseModel):
    shape: list[int] = Field(description="[height, width]: the image's own")
    values: list[list[float]] | None = Field(None, description="heatmap=values")
    png_base64: str | None = Field(None, description="heatmap=png (greyscale) or overlay (red over the image)")


class ImageSpot(BaseModel):
    name: str
    artifact_score: float = Field(description="0..1, how likely the image was altered")
    peak_score: float = Field(
        description="0..1, the 99th percentile of the mask's cells: about the most suspect 1% of the image, "
        "close to the highest cell on a small one (a small edit that the mean over tiles dilutes shows here); "
        "it does not decide `altered`"
    )
    altered: bool = Field(description="artifact_score (not peak_score) above the threshold")
    width: int
    height: int
    tiling: Tiling
    mask: Mask
    heatmap: Heatmap | None = Field(None, description="absent with heatmap=none")


class SpotAnswer(Served):
    threshold: float = Field(description="SPOT_THRESHOLD, else the model's own")
    results: list[ImageSpot]
