"""A SignatureDef's inputs and outputs, and the checks a request must pass before the model runs.

Checking names, dtypes, ranks, fixed dimensions and the batch size up front turns every bad
request into one INVALID_ARGUMENT that names the input and what was expected, instead of an
error from deep inside the graph (or a huge batch that exhausts memory).
"""

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from tf_explainer.serving.codec import numpy_dtype
from tf_explainer.serving.errors import invalid_argument


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One input or output: dtype and shape (None dims are dynamic; shape None: unknown rank)."""
    dtype: tf.DType
    shape: Optional[tuple]

    @classmethod
    def from_proto(cls, info):
        shape = None if info.tensor_shape.unknown_rank else tuple(
            None if dim.size < 0 else int(dim.size) for dim in info.tensor_shape.dim)
        return cls(tf.as_dtype(info.dtype), shape)

    @property
    def numpy_dtype(self):
        return numpy_dtype(self.dtype)

    def shape_text(self):
        if self.shape is None:
            return "<unknown rank>"
        return "[" + ", ".join("-1" if d is None else str(d) for d in self.shape) + "]"


@dataclasses.dataclass(frozen=True)
class Signature:
    name: str
    inputs: dict
    outputs: dict

    @classmethod
    def from_proto(cls, name, signature_def):
        return cls(name, {key: TensorInfo.from_proto(value)
                          for key, value in signature_def.inputs.items()},
                   {key: TensorInfo.from_proto(value)
                    for key, value in signature_def.outputs.items()})

    def check_names(self, names):
        """Every input given once, nothing else."""
        unknown = sorted(set(names) - set(self.inputs))
        missing = sorted(set(self.inputs) - set(names))
        if unknown or missing:
            raise invalid_argument(
                f"Signature {self.name!r} takes inputs {sorted(self.inputs)}; "
                + (f"unknown: {unknown}" if unknown else "")
                + ("; " if unknown and missing else "")
                + (f"missing: {missing}" if missing else "") + ".")

    def check_dtype(self, name, dtype):
        expected = self.inputs[name].dtype
        if tf.as_dtype(dtype) != expected:
            raise invalid_argument(f"Input {name!r} of signature {self.name!r} must be "
                                   f"{expected.name}, got {tf.as_dtype(dtype).name}.")

    def check_output_filter(self, output_filter):
        """Known output names, each once (TF Serving refuses repeats rather than dropping them)."""
        repeated = sorted({name for name in output_filter if list(output_filter).count(name) > 1})
        if repeated:
            raise invalid_argument(f"duplicate output tensor name: {repeated[0]} in output_filter "
                                   f"of signature {self.name!r}.")
        unknown = sorted(set(output_filter) - set(self.outputs))
        if unknown:
            raise invalid_argument(f"Output tensor alias not found in signature {self.name!r}: "
                                   f"{unknown}; outputs are {sorted(self.outputs)}.")

    def check_arrays(self, arrays, max_batch_size=None):
        """Names, shapes and one shared batch size <= max_batch_size; returns the batch size."""
        self.check_names(arrays)
        batch_sizes = {}
        for name, array in arrays.items():
            info = self.inputs[name]
            shape = tuple(np.shape(array))
            if info.shape is None:
                continue
            if len(shape) != len(info.shape) or any(
                    want is not None and got != want for got, want in zip(shape, info.shape)):
                raise invalid_argument(
                    f"Input {name!r} of signature {self.name!r} must have shape "
                    f"{info.shape_text()} (-1: any size), got {list(shape)}.")
            if info.shape and info.shape[0] is None:
                batch_sizes[name] = shape[0]
        if len(set(batch_sizes.values())) > 1:
            raise invalid_argument(f"Inputs of signature {self.name!r} have different batch "
                                   f"sizes: {batch_sizes}.")
        batch = next(iter(batch_sizes.values()), None)
        if batch == 0:
            raise invalid_argument("The batch is empty.")
        if batch is not None and max_batch_size is not None and batch > max_batch_size:
            raise invalid_argument(f"Task size {batch} is larger than maximum input batch size "
                                   f"{max_batch_size} (max_batch_size of the batching "
                                   "parameters); split the request.")
        return batch
