"""Requests to a TF Serving server for lungnet's exported signatures, and their responses, from raw images.

The signatures (`lungnet.serving.export`) take ``images`` (float32 HU / 0-255, or uint8 through
``serving_uint8``), for a nodule-fusion model ``masks`` (the nodule's outline on each image), and, for runs
with a fixed physical scale, ``pixel_spacing_mm``; they return ``probabilities``. A nodule-fusion model's
``image_only`` signature (``signature="image_only"``, no masks) outlines each nodule with the run's segmenter
and also returns those ``masks`` (``parse_rest_response(reply, "masks")``). REST (port 8501)::

    body = rest_request(images)                      # {"signature_name": ..., "inputs": {...}}
    reply = requests.post(rest_url("localhost", "binary_nodule"), json=body).json()
    probabilities = parse_rest_response(reply)

gRPC (port 8500, `tensorflow-serving-api`)::

    request = grpc_request("binary_nodule", images)
    response = stub.Predict(request, 10.0)           # a PredictionServiceStub on a channel to HOST:8500
    probabilities = parse_grpc_response(response)
"""

from __future__ import annotations

import json

import numpy as np

from lungnet.errors import DataError

OUTPUT = "probabilities"


def _signature_and_inputs(
    images, spacing, signature: str | None, masks=None
) -> tuple[str, dict[str, np.ndarray]]:
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise DataError(f"images: expected [batch, height, width] (or [.., 3] for 2.5-D), got {images.shape}")
    if images.dtype == np.uint8:
        name = signature or "serving_uint8"
        name = "image_only_uint8" if name == "image_only" else name  # the uint8 twin of the float32 signature
    else:
        images = images.astype(np.float32)
        name = signature or "serving_default"
    inputs = {"images": images}
    if masks is not None:  # the same dtype as the images: the signature takes both as one type
        masks = np.asarray(masks)
        if masks.shape != images.shape:
            raise DataError(f"masks: shape {masks.shape}; one mask per image, of its size {images.shape}")
        inputs["masks"] = (masks > 0).astype(images.dtype)
    if spacing is not None:
        spacing = np.asarray(spacing, np.float32).reshape(-1)
        if len(spacing) != len(images):
            raise DataError(f"pixel_spacing_mm: {len(spacing)} values for {len(images)} images")
        inputs["pixel_spacing_mm"] = spacing
    return name, inputs


def rest_url(host: str, model: str, port: int = 8501, version: int | None = None) -> str:
    where = f"/versions/{version}" if version is not None else ""
    return f"http://{host}:{port}/v1/models/{model}{where}:predict"


def rest_request(images, spacing=None, signature: str | None = None, masks=None) -> dict:
    """The JSON body of a REST predict call (columnar ``inputs``: one array per named input)."""
    name, inputs = _signature_and_inputs(images, spacing, signature, masks)
    return {"signature_name": name, "inputs": {k: v.tolist() for k, v in inputs.items()}}


def parse_rest_response(reply, output: str = OUTPUT) -> np.ndarray:
    """`output` (``probabilities``, or ``masks`` of an ``image_only`` call) from a REST reply (a dict or its
    JSON text); a server error becomes a DataError."""
    if isinstance(reply, str | bytes):
        reply = json.loads(reply)
    if "error" in reply:
        raise DataError(f"TF Serving refused the request: {reply['error']}")
    outputs = reply.get("outputs")
    if outputs is None:
        raise DataError(f"not a columnar predict reply (no 'outputs'): keys {sorted(reply)}")
    if isinstance(outputs, dict):
        if output not in outputs:
            raise DataError(f"the reply has no '{output}' output: {sorted(outputs)}")
        outputs = outputs[output]
    elif output != OUTPUT:
        raise DataError(f"the reply has one unnamed output, not '{output}'")
    return np.asarray(outputs, np.uint8 if output == "masks" else np.float32)


def grpc_request(
    model: str, images, spacing=None, signature: str | None = None, version: int | None = None, masks=None
):
    """A `tensorflow_serving.apis.predict_pb2.PredictRequest` for the images (and their masks)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    name, inputs = _signature_and_inputs(images, spacing, signature, masks)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = name
    if version is not None:
        request.model_spec.version.value = version
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def parse_grpc_response(response, output: str = OUTPUT) -> np.ndarray:
    """`output` (``probabilities``, or ``masks`` of an ``image_only`` call) from a `PredictResponse`."""
    import tensorflow as tf

    if output not in response.outputs:
        raise DataError(f"the response has no '{output}' output: {sorted(response.outputs)}")
    return tf.make_ndarray(response.outputs[output]).astype(np.uint8 if output == "masks" else np.float32)
