"""The Open Inference Protocol over gRPC (Triton's port 8001, KServe's GRPCInferenceService), beside the HTTP
routes of oip.py and sharing everything with them: the model, the batcher, the limits and the API key, so
tritonclient.grpc (or a KServe gRPC client) runs against the service. Off unless SPOT_GRPC_PORT is set.

The messages and the service come from tritonclient's generated code (Triton's grpc_service.proto, a
superset of KServe's): the methods not written here answer UNIMPLEMENTED, as the base class does."""

from __future__ import annotations

import asyncio
import math
import time
import uuid

import grpc
import numpy as np
from asgi_correlation_id import correlation_id
from fastapi.concurrency import run_in_threadpool
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from . import logs, oip
from .model import ExportedModel
from .runtime import Runtime, ServiceError, Work

SERVICE = "/inference.GRPCInferenceService"  # the metrics' route label: SERVICE/<method>
MAX_CALLS = 512  # in progress at once, as uvicorn's limit_concurrency for HTTP
# The HTTP routes' statuses as gRPC codes (as Triton maps its own errors)
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def input_batch(request: pb.ModelInferRequest, model: ExportedModel, max_images: int) -> np.ndarray:
    """The request's tensor as float32 NCHW: raw little-endian bytes (what tritonclient sends) or typed
    contents; checked as the HTTP route checks it."""
    tensor = oip.checked_input(request.inputs, model, max_images)
    shape = list(tensor.shape)
    count = math.prod(shape)
    if request.raw_input_contents:
        if tensor.HasField("contents"):
            raise oip.bad("give the input's contents or raw_input_contents, not both")
        if len(request.raw_input_contents) != 1:
            raise oip.bad(f"{len(request.raw_input_contents)} raw_input_contents for one input")
        raw = request.raw_input_contents[0]
        if len(raw) != 4 * count:
            raise oip.bad(f"raw_input_contents holds {len(raw)} bytes; shape {shape} in FP32 is {4 * count}")
        batch = np.frombuffer(raw, "<f4").astype(np.float32).reshape(shape)
    else:
        values = tensor.contents.fp32_contents
        if len(values) != count:
            raise oip.bad(f"fp32_contents holds {len(values)} values; shape {shape} needs {count}")
        batch = np.asarray(values, np.float32).reshape(shape)
    if not np.isfinite(batch).all():
        raise oip.bad("input holds NaN or infinite values")
    return batch


def output_names(request: pb.ModelInferRequest, model: ExportedModel) -> list[str]:
    """The outputs asked for, in order (none named = every output of the model)."""
    names = [out.name for out in request.outputs] or list(model.outputs)
    for out in request.outputs:
        oip.check_output(out.name, out.parameters, model)
    return list(dict.fromkeys(names))


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    async def answer(self, method: str, context: grpc.aio.ServicerContext, work):
        """`work()`'s message, or the ServiceError it raised as the matching gRPC status; counted and timed
        under SERVICE/method like the HTTP routes, and named by an x-request-id (the caller's metadata when
        plain, else a fresh one) in the log and the trailing metadata, as HTTP's X-Request-ID."""
        started, code = time.perf_counter(), grpc.StatusCode.OK
        given = dict(context.invocation_metadata() or ()).get("x-request-id", "")
        request_id = given if logs.plain_request_id(given) else uuid.uuid4().hex
        correlation_id.set(request_id)
        trailer = (("x-request-id", request_id),)
        context.set_trailing_metadata(trailer)
        try:
            return await work()
        except ServiceError as exc:
            code = CODES.get(exc.status, grpc.StatusCode.UNKNOWN)
            await context.abort(code, str(exc.detail), trailer)
        except asyncio.CancelledError:  # the client went away or its deadline passed
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = grpc.StatusCode.UNKNOWN if context.code() is None else context.code()
            raise
        finally:
            self.runtime.metrics.observe_request(f"{SERVICE}/{method}", code.name, time.perf_counter() - started)

    async def ServerLive(self, request, context):
        async def work():
            return pb.ServerLiveResponse(live=True)

        return await self.answer("ServerLive", context, work)

    async def ServerReady(self, request, context):
        async def work():
            return pb.ServerReadyResponse(ready=self.runtime.loaded is not None)

        return await self.answer("ServerReady", context, work)

    async def ModelReady(self, request, context):
        async def work():
            try:
                oip.served(self.runtime, request.name, request.version)
            except ServiceError:  # not loaded, or another model: not ready, as Triton answers
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self.answer("ModelReady", context, work)

    async def ServerMetadata(self, request, context):
        async def work():
            # binary_tensor_data is HTTP's: gRPC tensors are raw bytes anyway
            extensions = [e for e in oip.SERVER["extensions"] if e != "binary_tensor_data"]
            return pb.ServerMetadataResponse(**{**oip.SERVER, "extensions": extensions})

        return await self.answer("ServerMetadata", context, work)

    async def ModelMetadata(self, request, context):
        async def work():
            meta = oip.model_metadata(oip.served(self.runtime, request.name, request.version))
            tensors = {
                k: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta[k]] for k in ("inputs", "outputs")
            }
            return pb.ModelMetadataResponse(**{**meta, **tensors})

        return await self.answer("ModelMetadata", context, work)

    async def RepositoryIndex(self, request, context):
        async def work():
            models = [
                pb.RepositoryIndexResponse.ModelIndex(**e) for e in oip.repository_index(self.runtime, request.ready)
            ]
            return pb.RepositoryIndexResponse(models=models)

        return await self.answer("RepositoryIndex", context, work)

    async def ModelConfig(self, request, context):
        async def work():
            config = oip.model_config(oip.served(self.runtime, request.name, request.version), self.runtime)
            return json_format.ParseDict({"config": config}, pb.ModelConfigResponse())

        return await self.answer("ModelConfig", context, work)

    async def ModelStatistics(self, request, context):
        async def work():
            stats = oip.model_stats(self.runtime, request.name, request.version)  # no name: every model
            return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

        return await self.answer("ModelStatistics", context, work)

    async def ModelInfer(self, request, context):
        async def work():
            runtime = self.runtime
            metadata = dict(context.invocation_metadata() or ())
            runtime.check_auth(metadata.get("authorization"), "metadata authorization: Bearer <key>")
            model = oip.served(runtime, request.model_name, request.model_version)

            async def prepare() -> Work:
                parse = lambda: input_batch(request, model, runtime.settings.max_files)  # noqa: E731
                # raw bytes are one copy; typed contents go number by number: not on the event loop
                batch = parse() if request.raw_input_contents else await run_in_threadpool(parse)
                return Work(batch, output_names(request, model), len(batch))

            answer = await runtime.infer(f"{SERVICE}/ModelInfer", prepare)
            response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
            response.parameters["execution_provider"].string_param = model.provider
            for name in answer.work.outputs:
                values = np.ascontiguousarray(answer.outputs[name], "<f4")
                response.outputs.add(name=name, datatype="FP32", shape=values.shape)
                response.raw_output_contents.append(values.tobytes())
            return response

        return await self.answer("ModelInfer", context, work)


def max_message_bytes(model: ExportedModel | None, max_images: int, max_body_bytes: int) -> int:
    """What the largest valid request needs (max_images FP32 images, plus room for the rest), so that a
    message is refused before it is held in memory; the body limit when no model is loaded."""
    if model is None:
        return max_body_bytes
    return min(max_body_bytes, 4 * max_images * math.prod(model.meta["input"]["shape"][1:]) + (1 << 16))


class Server:
    """The gRPC server with the standard health service beside the protocol's (grpc.health.v1: what
    Kubernetes' gRPC probes, grpc_health_probe and load balancers ask): SERVING once the model is loaded."""

    def __init__(self, server: grpc.aio.Server, health_servicer):
        self.server, self.health = server, health_servicer

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()  # NOT_SERVING: balancers stop sending new calls
        await self.server.stop(grace)


async def start(servicer: Servicer, address: str, max_message: int, ready: bool) -> Server:
    """A gRPC server on the running event loop (uvicorn's). Several workers bind the same port: gRPC sets
    SO_REUSEPORT, so the kernel spreads their connections over them (a connection stays with one worker);
    `python -m service` checks first that no one else holds the port."""
    options = [("grpc.max_receive_message_length", max_message), ("grpc.so_reuseport", 1)]
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=MAX_CALLS)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", "inference.GRPCInferenceService"):  # "": the server as a whole
        await health_servicer.set(name, status)
    server.add_insecure_port(address)  # raises when it cannot
    await server.start()
    return Server(server, health_servicer)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
