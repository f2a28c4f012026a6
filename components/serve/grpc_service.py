"""TensorFlow Serving's gRPC API through tensorflow-serving-api's own protos and stubs.

PredictionService.Predict and GetModelMetadata, ModelService.GetModelStatus. Predict takes one
DT_STRING tensor per feature (the `serving_default` inputs) and answers `probability`
(DT_FLOAT, calibrated), `decision` (DT_BOOL, probability >= the version's threshold) and
`decision_threshold` (DT_DOUBLE scalar); the response's `model_spec.version` names the version
that answered.
"""

from __future__ import annotations

import logging
import time
from concurrent import futures

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from components.common.errors import StepError
from components.serve.models import (
    DECISION_OUTPUT,
    OUTPUT,
    SIGNATURE,
    THRESHOLD_OUTPUT,
    BadRequest,
    NotFound,
    Unavailable,
)
from components.serve.service import (
    KEY_FIELDS,
    MAX_INSTANCES,
    MAX_REQUEST_BYTES,
    Service,
    check_count,
)

log = logging.getLogger(__name__)

KEY_METADATA = "x-request-key"


def _selected(spec) -> tuple[int | None, str | None]:
    version = spec.version.value if spec.HasField("version") else None
    label = spec.version_label or None
    return version, label


def _strings(tensor, name: str) -> list[str]:
    from tensorflow.core.framework import types_pb2

    if tensor.dtype != types_pb2.DT_STRING:
        raise BadRequest(f"input {name!r}: expected a DT_STRING tensor, got "
                         f"{types_pb2.DataType.Name(tensor.dtype)}")
    dims = [d.size for d in tensor.tensor_shape.dim]
    if len(dims) == 1 and dims[0] > MAX_INSTANCES:
        check_count(dims[0])
    count = 1
    for d in dims:
        count *= d
    if len(dims) > 1 or count != len(tensor.string_val):
        raise BadRequest(f"input {name!r}: expected a 1-D tensor of {count} strings, got shape "
                         f"{dims} with {len(tensor.string_val)} values")
    try:
        return [value.decode("utf-8") for value in tensor.string_val]
    except UnicodeDecodeError as exc:
        raise BadRequest(f"input {name!r}: not UTF-8 ({exc})") from exc


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, service: Service):
        self.service = service

    def _check(self, request, context) -> None:
        name = self.service.manager.model_name
        if request.model_spec.name != name:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"model {request.model_spec.name!r} is not served (this server "
                          f"serves {name!r})")

    def Predict(self, request, context):  # noqa: N802 - the proto's name
        started = time.perf_counter()
        version_label, code = "none", grpc.StatusCode.OK
        try:
            self._check(request, context)
            if request.model_spec.signature_name not in ("", SIGNATURE):
                raise BadRequest(f"signature {request.model_spec.signature_name!r}: only "
                                 f"{SIGNATURE!r} is served over Predict")
            version, label = _selected(request.model_spec)
            key = dict(context.invocation_metadata()).get(KEY_METADATA)
            for field in KEY_FIELDS:
                if not key and field in request.inputs:
                    values = _strings(request.inputs[field], field)
                    key = values[0] if values else None
            model = self.service.route(version, label, key)
            version_label = str(model.version)
            missing = [f for f in model.features if f not in request.inputs]
            if missing:
                raise BadRequest(f"missing input(s) {', '.join(missing)}")
            columns = {f: _strings(request.inputs[f], f) for f in model.features}
            lengths = {len(v) for v in columns.values()}
            if len(lengths) != 1 or 0 in lengths:
                raise BadRequest("every input needs the same non-zero number of values, got "
                                 f"{ {f: len(v) for f, v in columns.items()} }")
            count = lengths.pop()
            check_count(count)
            rows = [{f: columns[f][i] for f in model.features} for i in range(count)]
            keys = next(([v or None for v in _strings(request.inputs[f], f)]
                         for f in KEY_FIELDS if f in request.inputs
                         and len(request.inputs[f].string_val) == count), None)
            outputs = self.service.predict(model, rows, key, keys)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = self.service.manager.model_name
            response.model_spec.version.value = model.version
            response.model_spec.signature_name = SIGNATURE
            from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

            shape = tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(outputs))])
            response.outputs[OUTPUT].CopyFrom(tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT, float_val=outputs, tensor_shape=shape))
            response.outputs[DECISION_OUTPUT].CopyFrom(tensor_pb2.TensorProto(
                dtype=types_pb2.DT_BOOL, bool_val=model.decide(outputs), tensor_shape=shape))
            response.outputs[THRESHOLD_OUTPUT].CopyFrom(tensor_pb2.TensorProto(
                dtype=types_pb2.DT_DOUBLE, double_val=[model.decision_threshold],
                tensor_shape=tensor_shape_pb2.TensorShapeProto()))
            return response
        except BadRequest as exc:
            code = grpc.StatusCode.INVALID_ARGUMENT
            context.abort(code, str(exc))
        except NotFound as exc:
            code = grpc.StatusCode.NOT_FOUND
            context.abort(code, str(exc))
        except Unavailable as exc:
            code = grpc.StatusCode.UNAVAILABLE
            context.abort(code, str(exc))
        except Exception as exc:
            if context.code() is not None:  # abort() raised: the status is already set
                code = context.code()
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("gRPC prediction failed")
            context.abort(code, f"prediction failed: {type(exc).__name__}: {exc}")
        finally:
            self.service.metrics.observe(
                "grpc", version_label, code.name,
                time.perf_counter() - started if code == grpc.StatusCode.OK else None)

    def GetModelMetadata(self, request, context):  # noqa: N802 - the proto's name
        self._check(request, context)
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"metadata_field must be ['signature_def'], got {fields}")
        try:
            model = self.service.route(*_selected(request.model_spec))
        except NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except Unavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in model.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.service.manager.model_name
        response.model_spec.version.value = model.version
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, service: Service):
        self.service = service

    def GetModelStatus(self, request, context):  # noqa: N802 - the proto's name
        name = self.service.manager.model_name
        if request.model_spec.name != name:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"model {request.model_spec.name!r} is not served")
        version, label = _selected(request.model_spec)
        try:
            if version is not None or label is not None:
                versions = [self.service.route(version, label).version]
            else:
                versions = sorted(self.service.manager.table.models)
        except NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except Unavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in versions:
            status = response.model_version_status.add()
            status.version = v
            status.state = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE
        return response


def make_grpc_server(service: Service, host: str, port: int, workers: int = 16,
                     max_request_bytes: int = MAX_REQUEST_BYTES):
    """A gRPC server (not started) with both services; returns (server, bound port).

    The request limit is REST's: a message over `max_request_bytes` is RESOURCE_EXHAUSTED
    (gRPC's own check), more than MAX_INSTANCES examples INVALID_ARGUMENT; calls beyond
    4 x `workers` at once are RESOURCE_EXHAUSTED instead of queueing without bound."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="serve-grpc"),
        options=[("grpc.max_receive_message_length", max_request_bytes),
                 ("grpc.so_reuseport", 0)],  # a port in use is an error, not shared
        maximum_concurrent_rpcs=4 * workers)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(service), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(service), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise StepError(f"gRPC port {host}:{port}: cannot listen there (in use, or not an "
                        "address of this machine)")
    return server, bound
