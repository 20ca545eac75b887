r"""Exports a trained explainer with its performer as a SavedModel version for TensorFlow Serving.

  tf-explainer export --performer_dir=runs/demo/performer --model_dir=runs/demo/explainer \
      --export_base=runs/demo/export --model_name=explainer [--version=N] [--max_image_pixels=N]

Writes <export_base>/<model_name>/<version>/ (the next free version unless --version is given);
serve it with serving/README.md. Every signature of the export refuses images of more than
--max_image_pixels pixels (image_bytes before decoding them), so the limit holds on TensorFlow
Serving as well as on `tf-explainer serve`.
"""

import os

from absl import app, flags

from tf_explainer.cli import common
from tf_explainer.cli.common import FLAGS
from tf_explainer import training
from tf_explainer.export import DEFAULT_MAX_IMAGE_PIXELS, export_explainer

flags.adopt_module_key_flags(common)

flags.DEFINE_string("export_base", None, "Model base path (TF Serving's --model_base_path parent); "
                    "<model_dir>/export when unset.")
flags.DEFINE_string("model_name", "explainer", "Model name in the serving base path and requests.")
flags.DEFINE_integer("version", None, "Version folder to write; the next free integer when unset.")
flags.DEFINE_integer("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS,
                     "Largest image (height x width) the signatures take; larger ones are refused "
                     "with INVALID_ARGUMENT, encoded ones from their header before decoding.",
                     lower_bound=1)


def export(performer_dir, model_dir, export_base=None, version=None):
    """Exports the explainer in model_dir over the performer in performer_dir; returns the path."""
    performer = common.load_performer(performer_dir)
    explainer = training.load_explainer(model_dir, performer)
    base = export_base or os.path.join(model_dir, "export")
    return export_explainer(explainer, performer, base, FLAGS.model_name, version,
                            overwrite=FLAGS.overwrite, max_image_pixels=FLAGS.max_image_pixels)


def main(argv):
    del argv
    if not (FLAGS.model_dir and FLAGS.performer_dir):
        raise app.UsageError("--model_dir and --performer_dir are required.")
    path = export(FLAGS.performer_dir, FLAGS.model_dir, FLAGS.export_base, FLAGS.version)
    print(f"Exported {path}\n  serve it: tf-explainer serve --model_base_path="
          f"{os.path.dirname(path)} --model_name={FLAGS.model_name}")
