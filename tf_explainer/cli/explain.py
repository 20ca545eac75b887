r"""Asks a served explainer (TensorFlow Serving or the contract double) to explain one image.

  tf-explainer explain --server=http://127.0.0.1:8501 --image=photo.jpg --top=5
  tf-explainer explain --protocol=grpc --server=127.0.0.1:8500 --image=photo.jpg \
      --assets_dir=models/explainer --overlay_png=photo_parts.png

Sends the encoded file to the `image_bytes` signature and prints the predicted class, its
probability and the top parts (filter, assigned category, contribution to the class, peak
position in the image's pixels). Class and category names are read from the exported model's
assets when --assets_dir names the version folder or the model's base path (the served version
is then looked up); TF Serving's API itself carries no names.
"""

import io
import os

import numpy as np
from absl import app, flags
from PIL import Image

from tf_explainer.export import read_class_names, read_filter_metadata
from tf_explainer.serving import GrpcClient, RestClient, ServingError
from tf_explainer.serving.explanation import explain, format_explanation, overlay

flags.DEFINE_string("server", None, "REST base URL (http://host:8501) or gRPC host:port.")
flags.DEFINE_enum("protocol", "rest", ["rest", "grpc"], "How to reach the server.")
flags.DEFINE_string("model_name", "explainer", "Served model name.")
flags.DEFINE_integer("model_version", None, "Version to ask for; the latest when unset.")
flags.DEFINE_string("image", None, "A JPEG, PNG, BMP or WebP file (what the image_bytes "
                    "signature decodes).")
flags.DEFINE_integer("top", 5, "How many parts to show.")
flags.DEFINE_string("overlay_png", None, "Where to write the image with the top parts drawn on.")
flags.DEFINE_string("assets_dir", None, "The exported version folder, or the model's base path, "
                    "to read class and category names from.")
FLAGS = flags.FLAGS


def _names(assets_dir, client):
    """(class names, filter categories) from the served version's assets, or (None, None)."""
    if not assets_dir:
        return None, None
    export_dir = assets_dir
    if not os.path.isdir(os.path.join(export_dir, "assets")):
        export_dir = os.path.join(assets_dir, str(client.served_version()))
    filters = read_filter_metadata(export_dir)["filters"]
    return read_class_names(export_dir), [item["category"] for item in filters]


def main(argv):
    del argv
    if not (FLAGS.server and FLAGS.image):
        raise app.UsageError("--server and --image are required.")
    if not os.path.isfile(FLAGS.image):
        raise app.UsageError(f"No image file {FLAGS.image}.")
    with open(FLAGS.image, "rb") as f:
        encoded = f.read()
    try:
        raw = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    except OSError as error:
        raise app.UsageError(f"{FLAGS.image} is not a readable JPEG/PNG image: {error}")
    client_type = RestClient if FLAGS.protocol == "rest" else GrpcClient
    client = client_type(FLAGS.server, FLAGS.model_name, FLAGS.model_version)
    try:
        outputs = client.predict({"image_bytes": [encoded]}, "image_bytes")
        class_names, categories = _names(FLAGS.assets_dir, client)
    except ServingError as error:
        raise SystemExit(f"The server refused the request: {error}")
    finally:
        client.close()
    explanation = explain(outputs, 0, FLAGS.top, class_names, categories)
    print(format_explanation(explanation))
    if FLAGS.overlay_png:
        Image.fromarray(overlay(raw, outputs, explanation)).save(FLAGS.overlay_png, format="PNG")
        print(f"overlay written to {FLAGS.overlay_png}")
