"""Writes the HTML report of a trained explainer on the test split.

  python -m tools.report --flagfile=configs/demo.flags \
      --performer_dir=runs/demo/performer --model_dir=runs/demo/explainer
"""

import os

import keras
from absl import app, flags

from tools import common
from tools.common import FLAGS
from tf_explainer import report, training

flags.DEFINE_string("report_dir", None, "Where the report goes; <model_dir>/report when unset.")
flags.DEFINE_integer("probe_images", 4, "Test images shown with their part contributions.")
flags.DEFINE_integer("max_filters", None, "Show only this many part filters (most stable first).")


def main(argv):
    del argv
    if not (FLAGS.model_dir and FLAGS.performer_dir):
        raise app.UsageError("--model_dir (an explainer model dir) and --performer_dir are required.")
    performer = training.load_performer(FLAGS.performer_dir)
    explainer = keras.saving.load_model(os.path.join(FLAGS.model_dir, training.EXPLAINER_FILE))
    explainer.attach_performer(performer.taps())
    source = common.data_source()
    _, test = common.splits(source, performer)
    path = report.write_report(explainer, performer, test,
                               FLAGS.report_dir or os.path.join(FLAGS.model_dir, "report"),
                               performer.class_names, source.landmark_names,
                               probe_images=FLAGS.probe_images, max_filters=FLAGS.max_filters)
    print(path)


if __name__ == "__main__":
    app.run(main)
