"""Tensors on the wire: TensorProtos for gRPC and TensorFlow Serving's REST JSON bodies.

REST forms (TF Serving's json_tensor.h), shared by the server and the REST client:
  row:      {"signature_name": s, "instances": [instance, ...]} -> {"predictions": [...]}
  columnar: {"signature_name": s, "inputs": tensor | {name: tensor}} -> {"outputs": ...}
An instance is {name: value} per input, or a bare value when the signature has one input. Binary
strings travel as {"b64": "..."}; output strings are base64 only when the output's name ends in
"_bytes" (as TF Serving writes them). Errors are {"error": message}. orjson does the JSON work on
both sides: it writes numpy arrays natively, which keeps large part maps cheap to encode.
"""

import base64
import binascii

import numpy as np
import orjson
import tensorflow as tf

from tf_explainer.serving.errors import invalid_argument
from tf_explainer.serving.protocol import DEFAULT_SIGNATURE

FORMS = ("row", "columnar")
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def tensor_proto(value):
    """An array (see as_array; strings as bytes) -> TensorProto."""
    return tf.make_tensor_proto(as_array(value))


def ndarray(proto) -> np.ndarray:
    """TensorProto -> numpy array (strings come back as an object array of bytes)."""
    return tf.make_ndarray(proto)


def numpy_dtype(dtype):
    """A DataType enum, tf.DType or numpy dtype -> numpy dtype (object for strings)."""
    dtype = tf.as_dtype(dtype)
    return np.dtype(object) if dtype == tf.string else np.dtype(dtype.as_numpy_dtype)


def dumps(value) -> bytes:
    return orjson.dumps(value, option=_JSON_OPTIONS)


def error_body(message) -> bytes:
    return dumps({"error": str(message)})


def _is_b64(value):
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _strings_to_json(array, binary):
    """Object/bytes array -> nested lists of {"b64": ...} (binary) or UTF-8 text."""
    def encode(item):
        if isinstance(item, str):
            item = item.encode()
        if binary:
            return {"b64": base64.b64encode(item).decode("ascii")}
        return item.decode("utf-8", errors="replace")

    return np.asarray(np.frompyfunc(encode, 1, 1)(array), dtype=object).tolist()


def json_value(array, binary=True):
    """An array (see as_array) as a JSON-ready value (numeric arrays stay numpy for orjson)."""
    array = as_array(array)
    if array.dtype.kind in "OSU":
        return _strings_to_json(array, binary)
    return np.ascontiguousarray(array)


def _strings_from_json(value, name):
    """Nested lists of {"b64": ...} objects, text or bytes -> nested lists of bytes."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, list):
        return [_strings_from_json(item, name) for item in value]
    if _is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, TypeError, ValueError) as error:
            raise invalid_argument(f"{name!r}: {{\"b64\": ...}} does not hold valid base64 "
                                   f"({error}).") from None
    if isinstance(value, str):
        return value.encode()
    raise invalid_argument(f"{name!r} is a string tensor: each value must be a JSON string or "
                           f"{{\"b64\": \"...\"}}, got {type(value).__name__}.")


def _rectangular_shape(value):
    """The shape of nested lists, or None when they are ragged."""
    if not isinstance(value, list):
        return ()
    shapes = {_rectangular_shape(item) for item in value}
    if None in shapes or len(shapes) > 1:
        return None
    return (len(value),) + (shapes.pop() if shapes else ())


def _flatten(value):
    if isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def _string_array(value, name):
    """Nested lists of strings (see _strings_from_json) -> object array of bytes. Not np.array:
    its fixed-width 'S' strings drop trailing NUL bytes of binary data."""
    try:
        strings = _strings_from_json(value, name)
        shape = _rectangular_shape(strings)
    except RecursionError:
        raise invalid_argument(f"{name!r}: the lists are nested too deeply.") from None
    if shape is None:
        raise invalid_argument(f"{name!r}: the nested lists have different lengths; a tensor "
                               "must be rectangular.")
    return np.fromiter(_flatten(strings), dtype=object).reshape(shape)


def as_array(value) -> np.ndarray:
    """An input as numpy; bytes or text (nested lists of them) as an object array of bytes."""
    if isinstance(value, np.ndarray):
        return value
    leaf = value
    while isinstance(leaf, list) and leaf:
        leaf = leaf[0]
    if isinstance(leaf, (bytes, str)):
        return _string_array(value, "input")
    return np.asarray(value)


def _kind_fits(kind, dtype):
    if dtype.kind == "b":
        return kind == "b"
    if dtype.kind in "iu":
        return kind in "iu"
    if dtype.kind in "fc":
        return kind in "iuf"
    return False


def array_from_json(value, dtype, name) -> np.ndarray:
    """A JSON tensor value -> numpy array of `dtype`, with errors that say what is wrong.

    Refuses ragged lists, values of the wrong kind (floats or strings for integers, numbers for
    strings) and integers out of the dtype's range, rather than casting them silently.
    """
    dtype = np.dtype(dtype)
    if dtype == object:
        return _string_array(value, name)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise invalid_argument(f"{name!r}: the nested lists have different lengths (or mix lists "
                               "and values); a tensor must be rectangular.") from None
    if array.size == 0:
        return array.astype(dtype)
    if not _kind_fits(array.dtype.kind, dtype):
        raise invalid_argument(
            f"{name!r} expects {dtype.name} values, got {_describe_kind(array.dtype)}.")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            raise invalid_argument(f"{name!r}: value {low if low < info.min else high} is out of "
                                   f"range for {dtype.name} [{info.min}, {info.max}].")
    return array.astype(dtype, copy=False)


def _describe_kind(dtype):
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "floating-point numbers",
            "U": "strings", "S": "strings", "O": "objects or mixed values"}.get(dtype.kind,
                                                                              dtype.name)


# ---- requests ------------------------------------------------------------------------------


def predict_request_body(inputs, signature_name=DEFAULT_SIGNATURE, form="row") -> bytes:
    """The JSON body of a :predict call; string inputs are sent as {"b64": ...}."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}.")
    if not inputs:
        raise ValueError("predict needs at least one input.")
    values = {name: json_value(value) for name, value in inputs.items()}
    body = {"signature_name": signature_name}
    if form == "columnar":
        body["inputs"] = values
        return dumps(body)
    sizes = {name: len(value) for name, value in values.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"The row form needs the same batch size for every input, got {sizes}.")
    batch = next(iter(sizes.values()))
    body["instances"] = [{name: value[i] for name, value in values.items()} for i in range(batch)]
    return dumps(body)


def parse_predict_body(body: bytes):
    """(signature_name, form, payload) of a :predict body; payload is "instances" or "inputs"."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise invalid_argument(f"Malformed JSON in the request body: {error}") from None
    if not isinstance(request, dict):
        raise invalid_argument("The request body must be a JSON object with \"instances\" (row "
                               "form) or \"inputs\" (columnar form).")
    signature_name = request.get("signature_name") or DEFAULT_SIGNATURE
    if not isinstance(signature_name, str):
        raise invalid_argument("\"signature_name\" must be a string.")
    if ("instances" in request) == ("inputs" in request):
        raise invalid_argument("The request body must have exactly one of \"instances\" (row "
                               "form) or \"inputs\" (columnar form).")
    if "instances" in request:
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise invalid_argument("\"instances\" must be a non-empty list.")
        return signature_name, "row", instances
    return signature_name, "columnar", request["inputs"]


def _is_named(value):
    return isinstance(value, dict) and not _is_b64(value)


def named_inputs(form, payload, input_names):
    """JSON value per input name from a parsed body, given the signature's input names."""
    if form == "columnar":
        if _is_named(payload):
            return payload
        if len(input_names) != 1:
            raise invalid_argument(f"\"inputs\" must be an object naming each input: "
                                   f"{sorted(input_names)}.")
        return {next(iter(input_names)): payload}
    named = [_is_named(item) for item in payload]
    if not any(named):
        if len(input_names) != 1:
            raise invalid_argument(f"Each instance must be an object naming each input: "
                                   f"{sorted(input_names)}.")
        return {next(iter(input_names)): payload}
    if not all(named):
        raise invalid_argument("Instances mix named objects and bare values.")
    keys = set(payload[0])
    for i, item in enumerate(payload):
        if set(item) != keys:
            raise invalid_argument(f"Instance {i} names inputs {sorted(item)}, instance 0 names "
                                   f"{sorted(keys)}; every instance must name the same inputs.")
    return {key: [item[key] for item in payload] for key in keys}


# ---- responses -----------------------------------------------------------------------------


def predict_response_body(outputs, form) -> bytes:
    """{"predictions": ...} (row) or {"outputs": ...} (columnar) from numpy outputs."""
    values = {name: json_value(value, binary=name.endswith("_bytes"))
              for name, value in outputs.items()}
    if form == "columnar":
        return dumps({"outputs": next(iter(values.values())) if len(values) == 1 else values})
    sizes = {name: len(value) for name, value in values.items()}
    if len(set(sizes.values())) != 1:
        raise invalid_argument(f"The row form needs every output to have the same batch size, "
                               f"got {sizes}; use the columnar form (\"inputs\").")
    if len(values) == 1:
        return dumps({"predictions": next(iter(values.values()))})
    batch = next(iter(sizes.values()))
    return dumps({"predictions": [{name: value[i] for name, value in values.items()}
                                  for i in range(batch)]})


def parse_predict_response(body: bytes, output_dtypes) -> dict:
    """numpy outputs from a :predict response; output_dtypes: {name: dtype} of the signature
    (names the output of a single-output signature, which TF Serving leaves unnamed, and
    restores dtypes that JSON does not carry)."""
    response = orjson.loads(body)
    single = next(iter(output_dtypes)) if len(output_dtypes) == 1 else None
    if "outputs" in response:
        outputs = {single: response["outputs"]} if single else response["outputs"]
    else:
        rows = response["predictions"]
        outputs = {single: rows} if single else {
            name: [row[name] for row in rows] for name in output_dtypes}
    return {name: array_from_json(value, output_dtypes[name], name)
            for name, value in outputs.items()}


def parse_error(body: bytes) -> str:
    """The message of an {"error": ...} body (the raw text when it is not one)."""
    try:
        return str(orjson.loads(body)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body.decode("utf-8", errors="replace")
