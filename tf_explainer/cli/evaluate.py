r"""Measures a trained explainer (and optionally the Explainer+cls baseline) on the test split.

  tf-explainer evaluate --preset=demo --performer_dir=runs/demo/performer \
      --model_dir=runs/demo/explainer [--baseline_dir=runs/demo/explainer_cls]

Writes <model_dir>/eval/metrics.json and <model_dir>/eval/summary.txt.
"""

import json
import os

from absl import app, flags

from tf_explainer.cli import common
from tf_explainer.cli.common import FLAGS
from tf_explainer import evaluation, training

flags.adopt_module_key_flags(common)
flags.DEFINE_string("baseline_dir", None, "Model directory of an Explainer+cls baseline "
                    "(train_explainer --objective=classification) to report beside it.")


def evaluate_dirs(performer_dir, model_dir, baseline_dir=None, others=None):
    """Metrics of the explainer in model_dir and of the other explainers (baseline, ablations),
    written under model_dir/eval (metrics.json, summary.txt).

    others: {name: model directory} measured beside it (e.g. the demo's ablations); baseline_dir
    is reported as "explainer_cls". Each explainer's training record (gradient-norm ratios per
    epoch, converged epoch, lambda), when its directory has one, is included under "training".
    """
    performer = common.load_performer(performer_dir)
    source = common.data_source()
    _, test = common.splits(source, performer)
    geometries = evaluation.performer_geometries(performer)
    dirs = {"explainer": model_dir, **({"explainer_cls": baseline_dir} if baseline_dir else {}),
            **(others or {})}
    metrics = {}
    for name, directory in dirs.items():
        explainer = training.load_explainer(directory, performer)
        metrics[name] = evaluation.evaluate(explainer, test, geometries,
                                            landmark_names=source.landmark_names,
                                            class_names=source.class_names)
        record = os.path.join(directory, training.TRAINING_RECORD)
        if os.path.exists(record):
            with open(record) as f:
                metrics[name]["training"] = {k: v for k, v in json.load(f).items() if k != "history"}
        if name == "explainer":
            probe = next(iter(test.unbatch().batch(FLAGS.probe_images)))
            metrics["part_contributions"] = evaluation.top_contributions(explainer, probe,
                                                                         source.class_names)
    out_dir = os.path.join(model_dir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    with open(os.path.join(out_dir, "summary.txt"), "w") as f:
        f.write(evaluation.summary_text(metrics))
    return metrics


def main(argv):
    del argv
    if not (FLAGS.model_dir and FLAGS.performer_dir):
        raise app.UsageError("--model_dir and --performer_dir are required.")
    metrics = evaluate_dirs(FLAGS.performer_dir, FLAGS.model_dir, FLAGS.baseline_dir)
    print(evaluation.summary_text(metrics))
