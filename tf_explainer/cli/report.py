r"""Writes the HTML report of a trained explainer on the test split.

  tf-explainer report --preset=demo \
      --performer_dir=runs/demo/performer --model_dir=runs/demo/explainer
"""

import os

from absl import app, flags

from tf_explainer.cli import common
from tf_explainer.cli.common import FLAGS
from tf_explainer import report, training

flags.adopt_module_key_flags(common)
flags.DEFINE_string("report_dir", None, "Where the report goes; <model_dir>/report when unset.")
flags.DEFINE_integer("max_filters", None, "Show only this many part filters (most stable first).")


def write(performer_dir, model_dir, report_dir=None):
    """Writes the report of the explainer in model_dir; returns the path of its index.html."""
    performer = common.load_performer(performer_dir)
    explainer = training.load_explainer(model_dir, performer)
    source = common.data_source()
    _, test = common.splits(source, performer)
    return report.write_report(explainer, performer, test,
                               report_dir or os.path.join(model_dir, "report"),
                               performer.class_names, source.landmark_names,
                               probe_images=FLAGS.probe_images, max_filters=FLAGS.max_filters,
                               comparisons=report.load_comparisons(
                                   os.path.join(model_dir, "eval", "metrics.json")))


def main(argv):
    del argv
    if not (FLAGS.model_dir and FLAGS.performer_dir):
        raise app.UsageError("--model_dir (an explainer model dir) and --performer_dir are required.")
    print(write(FLAGS.performer_dir, FLAGS.model_dir, FLAGS.report_dir))
