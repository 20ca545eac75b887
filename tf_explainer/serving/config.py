"""TensorFlow Serving's configuration files, read the way the model server reads them.

- models.config: a ModelServerConfig text proto (the real proto from tensorflow-serving-api).
- Version folders: integer sub-folders of a model's base path that hold a saved_model.pb; which
  ones are served follows the model's version policy (latest N by default, all, or specific).
- Batching parameters: a BatchingParameters text proto. That proto ships with the model server,
  not with the tensorflow-serving-api wheel, so `read_batching_parameters` is a small parser of
  its `field { value: N }` / `field: N` lines that checks field names against the real ones.
"""

import os
import re

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

DEFAULT_PLATFORM = "tensorflow"

# BatchingParameters (tensorflow_serving/servables/tensorflow/session_bundle_config.proto).
BATCHING_FIELDS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                   "num_batch_threads", "thread_pool_name", "allowed_batch_sizes",
                   "pad_variable_length_inputs", "enable_large_batch_splitting",
                   "max_execution_batch_size", "batch_padding_policy", "enable_priority_queue")
_WRAPPED = re.compile(r"^(\w+)\s*\{\s*value\s*:\s*(\S+?)\s*\}$")
_PLAIN = re.compile(r"^(\w+)\s*:\s*(\S+)$")


def read_model_server_config(path) -> model_server_config_pb2.ModelServerConfig:
    """Parses a models.config file; errors name the file."""
    with open(path) as f:
        text = f.read()
    try:
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as error:
        raise ValueError(f"{path}: not a ModelServerConfig text proto: {error}") from None
    models = config.model_config_list.config
    if not models:
        raise ValueError(f"{path}: model_config_list names no model.")
    for model in models:
        if not model.name or not model.base_path:
            raise ValueError(f"{path}: every model needs a name and a base_path.")
        if model.model_platform not in ("", DEFAULT_PLATFORM):
            raise ValueError(f"{path}: model {model.name!r} has platform "
                             f"{model.model_platform!r}; only {DEFAULT_PLATFORM!r} is served.")
    return config


def single_model_config(name, base_path) -> model_server_config_pb2.ModelServerConfig:
    """What --model_name/--model_base_path mean: one model, latest version."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = name, base_path, DEFAULT_PLATFORM
    return config


def available_versions(base_path) -> list:
    """Sorted integer version folders under base_path that hold a SavedModel."""
    if not os.path.isdir(base_path):
        return []
    return sorted(int(name) for name in os.listdir(base_path)
                  if name.isdigit() and os.path.isfile(os.path.join(base_path, name,
                                                                    "saved_model.pb")))


def versions_to_serve(base_path, policy=None) -> list:
    """The versions a model's ServableVersionPolicy asks for, among those on disk."""
    versions = available_versions(base_path)
    which = policy.WhichOneof("policy_choice") if policy is not None else None
    if which == "all":
        return versions
    if which == "specific":
        return [v for v in versions if v in set(policy.specific.versions)]
    count = policy.latest.num_versions if which == "latest" and policy.latest.num_versions else 1
    return versions[-count:]


def _value(text):
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text.strip('"')


def read_batching_parameters(path) -> dict:
    """{field: value} of a BatchingParameters text file; allowed_batch_sizes is a list."""
    parameters = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            match = _WRAPPED.match(line) or _PLAIN.match(line)
            if not match:
                raise ValueError(f"{path}:{number}: expected `field {{ value: N }}` or "
                                 f"`field: N`, got {line!r}.")
            name, value = match.group(1), _value(match.group(2))
            if name not in BATCHING_FIELDS:
                raise ValueError(f"{path}:{number}: unknown batching parameter {name!r}; "
                                 f"known: {', '.join(BATCHING_FIELDS)}.")
            if name == "allowed_batch_sizes":
                parameters.setdefault(name, []).append(value)
            else:
                parameters[name] = value
    allowed = parameters.get("allowed_batch_sizes")
    if allowed and allowed[-1] != parameters.get("max_batch_size", allowed[-1]):
        raise ValueError(f"{path}: the last allowed_batch_sizes ({allowed[-1]}) must equal "
                         f"max_batch_size ({parameters['max_batch_size']}).")
    return parameters
