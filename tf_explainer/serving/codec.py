"""Tensors on the wire: TensorProtos for gRPC and TensorFlow Serving's REST JSON bodies.

REST forms (TF Serving's json_tensor.h), shared by the server and the REST client:
  row:      {"signature_name": s, "instances": [instance, ...]} -> {"predictions": [...]}
  columnar: {"signature_name": s, "inputs": tensor | {name: tensor}} -> {"outputs": ...}
An instance is {name: value} per input, or a bare value when the signature has one input. Binary
strings travel as {"b64": "..."}; output strings are base64 only when the output's name ends in
"_bytes" (as TF Serving writes them). Errors are {"error": message}. orjson does the JSON work on
both sides: it writes numpy arrays natively, which keeps large part maps cheap to encode.

gRPC: requests carry `tensor_content` (tensor_proto); answers fill the typed fields such as
`float_val` (typed_tensor_proto), as TF Serving's do. ndarray reads either.
"""

import base64
import binascii
import contextlib
import gc
import threading

import numpy as np
import orjson
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from tf_explainer.serving.errors import invalid_argument
from tf_explainer.serving.protocol import DEFAULT_SIGNATURE

FORMS = ("row", "columnar")
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

# TensorProto's typed value fields (tensor.proto), as tensorflow::Tensor::AsProtoField fills them.
# Floating-point values are packed fixed-width little-endian numbers on the wire, exactly the
# array's bytes: those fields are written and read as one block (field number, numpy type).
_PACKED_FIELDS = {tf.float32: (5, "<f4"), tf.float64: (6, "<f8"), tf.complex64: (9, "<c8"),
                  tf.complex128: (12, "<c16")}
# The others are varints, filled value by value (field name, numpy type of the values).
_VARINT_FIELDS = {tf.int8: ("int_val", np.int32), tf.int16: ("int_val", np.int32),
                  tf.int32: ("int_val", np.int32), tf.uint8: ("int_val", np.int32),
                  tf.uint16: ("int_val", np.int32), tf.int64: ("int64_val", np.int64),
                  tf.uint32: ("uint32_val", np.uint32), tf.uint64: ("uint64_val", np.uint64),
                  tf.bool: ("bool_val", np.bool_), tf.float16: ("half_val", np.uint16),
                  tf.bfloat16: ("half_val", np.uint16)}
_LENGTH_DELIMITED = 2
_gc_pause = {"lock": threading.Lock(), "depth": 0, "was_enabled": False}


@contextlib.contextmanager
def gc_paused():
    """Pauses Python's cyclic garbage collector while JSON tensors become numpy arrays.

    A 224 x 224 RGB image in JSON is 50,000 small lists. Allocating them sets off collections,
    and in a process holding TensorFlow's objects about every other request paid for a full one
    (~0.15 s). The lists hold no cycles: reference counting frees them once they are converted,
    before the collector runs again. Nested and concurrent pauses share one pause."""
    with _gc_pause["lock"]:
        if _gc_pause["depth"] == 0:
            _gc_pause["was_enabled"] = gc.isenabled()
            gc.disable()
        _gc_pause["depth"] += 1
    try:
        yield
    finally:
        with _gc_pause["lock"]:
            _gc_pause["depth"] -= 1
            if _gc_pause["depth"] == 0 and _gc_pause["was_enabled"]:
                gc.enable()


def tensor_proto(value):
    """An array (see as_array; strings as bytes) -> TensorProto with `tensor_content` (compact;
    what the clients send, and TF Serving reads it as well as the typed fields)."""
    return tf.make_tensor_proto(as_array(value))


def _varint(number) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _read_varint(data, position):
    number = shift = 0
    while True:
        byte = data[position]
        number |= (byte & 0x7F) << shift
        position += 1
        shift += 7
        if not byte & 0x80:
            return number, position


def typed_tensor_proto(value) -> tensor_pb2.TensorProto:
    """An array -> TensorProto with the values in the typed fields (float_val, int64_val, ...),
    as TF Serving encodes Predict outputs by default, so clients that read
    `outputs[name].float_val` see the values. Float fields are filled from the array's bytes in
    one step; field by field they would cost ~0.2 s per million values."""
    array = as_array(value)
    dtype = tf.string if array.dtype.kind in "OSU" else tf.as_dtype(array.dtype)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum,
                                   tensor_shape=tf.TensorShape(array.shape).as_proto())
    if dtype == tf.string:
        proto.string_val.extend(item.encode() if isinstance(item, str) else bytes(item)
                                for item in array.ravel())
    elif dtype in _PACKED_FIELDS:
        number, layout = _PACKED_FIELDS[dtype]
        data = np.ascontiguousarray(array, dtype=layout).tobytes()
        proto.MergeFromString(_varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(data)) + data)
    elif dtype in _VARINT_FIELDS:
        name, values = _VARINT_FIELDS[dtype]
        flat = array.ravel()
        if dtype in (tf.float16, tf.bfloat16):  # half_val holds the 16-bit patterns
            flat = flat.view(np.uint16)
        getattr(proto, name).extend(flat.astype(values).tolist())
    else:
        raise ValueError(f"No typed TensorProto field for dtype {dtype.name}.")
    return proto


def _packed_bytes(message: bytes, number) -> bytes:
    """The payload of length-delimited field `number` at the top level of a serialized message
    (the parts joined, as a parser would merge them)."""
    parts, position = [], 0
    while position < len(message):
        key, position = _read_varint(message, position)
        wire_type = key & 7
        if wire_type == 0:
            _, position = _read_varint(message, position)
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _read_varint(message, position)
            if key >> 3 == number:
                parts.append(message[position:position + length])
            position += length
        else:
            raise ValueError(f"Unexpected wire type {wire_type} in a TensorProto.")
    return b"".join(parts)


def ndarray(proto) -> np.ndarray:
    """TensorProto -> numpy array (strings come back as an object array of bytes).

    Float fields are read as one block of bytes (tf.make_ndarray walks them value by value,
    ~0.1 s per million); anything else, including fields that hold fewer values than the shape
    (TF repeats the last one), goes to tf.make_ndarray."""
    dtype = tf.as_dtype(proto.dtype)
    if dtype in _PACKED_FIELDS and not proto.tensor_content:
        number, layout = _PACKED_FIELDS[dtype]
        shape = [dim.size for dim in proto.tensor_shape.dim]
        data = _packed_bytes(proto.SerializeToString(), number)
        if len(data) == int(np.prod(shape)) * np.dtype(layout).itemsize:
            return np.frombuffer(data, layout).astype(dtype.as_numpy_dtype).reshape(shape)
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
    signature_name = request.get("signature_name", "")
    if not isinstance(signature_name, str):  # null included, as TF Serving's JSON reader has it
        raise invalid_argument("'signature_name' key must be a string value.")
    signature_name = signature_name or DEFAULT_SIGNATURE
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
    with gc_paused():
        return _parse_predict_response(body, output_dtypes)


def _parse_predict_response(body, output_dtypes):
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
