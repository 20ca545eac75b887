r"""Runs the contract double: a DEVELOPMENT STAND-IN for TensorFlow Serving on 127.0.0.1.

  tf-explainer serve --model_base_path=models/explainer --model_name=explainer \
      --rest_port=8501 --grpc_port=8500 [--batching_parameters_file=serving/batching_parameters.txt]
  tf-explainer serve --model_config_file=serving/models.config

It serves the same REST and gRPC API as tensorflow_model_server over the exported SavedModel,
so clients and tools can be developed and tested where the real server cannot be installed. Use
the tensorflow/serving image for anything else (serving/README.md). Ports 0 pick free ones; the
chosen ones are printed as "REST http://127.0.0.1:PORT" and "gRPC 127.0.0.1:PORT". Stops on
SIGINT/SIGTERM. A new version folder that fails to load (still being copied, corrupt) is
reported in the model status and tried again when it changes; the serving version stays.
"""

import signal
import threading

from absl import app, flags

from tf_explainer.serving.config import (read_batching_parameters, read_model_server_config,
                                         single_model_config)
from tf_explainer.serving.protocol import (DEFAULT_GRPC_PORT, DEFAULT_MAX_REQUEST_BODY_BYTES,
                                           DEFAULT_REST_PORT)
from tf_explainer.serving.server import ModelServer

flags.DEFINE_string("model_name", "explainer", "Model name (with --model_base_path).")
flags.DEFINE_string("model_base_path", None, "Folder holding the model's integer version folders.")
flags.DEFINE_string("model_config_file", None, "A models.config (ModelServerConfig text proto); "
                    "replaces --model_name/--model_base_path.")
flags.DEFINE_integer("rest_port", DEFAULT_REST_PORT, "REST port on 127.0.0.1 (0: a free one).")
flags.DEFINE_integer("grpc_port", DEFAULT_GRPC_PORT, "gRPC port on 127.0.0.1 (0: a free one).")
flags.DEFINE_string("batching_parameters_file", None, "BatchingParameters text file; its "
                    "max_batch_size bounds every request's batch (the double does not batch).")
flags.DEFINE_float("file_system_poll_wait_seconds", 1.0,
                   "How often base paths are scanned for new versions (0: only at start).")
flags.DEFINE_integer("max_request_body_bytes", DEFAULT_MAX_REQUEST_BODY_BYTES,
                     "REST request bodies over this many bytes are refused with HTTP 413 without "
                     "being held in memory (a guard of the contract double).",
                     lower_bound=1)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if bool(FLAGS.model_base_path) == bool(FLAGS.model_config_file):
        raise app.UsageError("Give exactly one of --model_base_path and --model_config_file.")
    config = (read_model_server_config(FLAGS.model_config_file) if FLAGS.model_config_file
              else single_model_config(FLAGS.model_name, FLAGS.model_base_path))
    batching = (read_batching_parameters(FLAGS.batching_parameters_file)
                if FLAGS.batching_parameters_file else None)
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    server = ModelServer(config, batching, rest_port=FLAGS.rest_port, grpc_port=FLAGS.grpc_port,
                         poll_seconds=FLAGS.file_system_poll_wait_seconds,
                         max_request_body_bytes=FLAGS.max_request_body_bytes).start()
    print(f"REST {server.rest_url}", flush=True)
    print(f"gRPC {server.grpc_target}", flush=True)
    stop.wait()
    server.stop()
