"""The end-to-end job on the embedded default: performer, explainer, measurements, report,
SavedModel export, summary.

  python -m tools.demo --flagfile=configs/demo.flags      (what `make demo` runs)
"""

import json
import os

from absl import app, flags, logging

from tools import (cache_features, common, evaluate, export, report, train_explainer,
                   train_performer)
from tools.common import FLAGS
from tf_explainer import evaluation
from tf_explainer.strategy import is_chief

flags.DEFINE_string("run_dir", "runs/demo", "Where the demo writes everything.")
flags.DEFINE_integer("comparison_epochs", 4, "Most epochs of the baseline and ablation runs (the "
                     "method trains up to --epochs), to keep the demo's time budget.")

SUMMARY_KEYS = ("performer_accuracy", "reconstructed_accuracy", "reconstructed_error_increase", "p",
                "instability_performer_target", "instability_performer_top",
                "instability_explainer", "instability_fixed_point", "part_coverage",
                "part_coverage_top", "duplicate_filters", "duplicate_filters_top")
# The baseline and the ablations beside the method: name -> flag values that differ.
COMPARISONS = {"explainer_cls": {"objective": "classification"},
               "no_filter_loss": {"filter_loss_weight": 0.0},
               "no_masks": {"use_masks": False}}


def main(argv):
    del argv
    clock = common.Stopwatch()
    stages = {}

    def stage(name, fn, *args, **kwargs):
        start = common.Stopwatch()
        logging.info("== %s ==", name)
        result = fn(*args, **kwargs)
        stages[name] = start.seconds()
        logging.info("== %s done in %.0f s ==", name, stages[name])
        return result

    performer_dir = os.path.join(FLAGS.run_dir, "performer")
    explainer_dir = os.path.join(FLAGS.run_dir, "explainer")
    other_dirs = {name: os.path.join(FLAGS.run_dir, name) for name in COMPARISONS}
    stage("performer", train_performer.train, performer_dir)
    if not FLAGS.feature_cache:
        FLAGS.feature_cache = os.path.join(FLAGS.run_dir, "cache")
    stage("feature cache", cache_features.cache, performer_dir, FLAGS.feature_cache)
    stage("explainer", train_explainer.train, performer_dir, explainer_dir)
    for name, overrides in COMPARISONS.items():
        stage(name, train_explainer.train, performer_dir, other_dirs[name],
              epochs=min(FLAGS.epochs, FLAGS.comparison_epochs), **overrides)
    if not is_chief(common.strategy()):  # under multi_worker the other workers only train
        return
    all_metrics = stage("evaluation", evaluate.evaluate_dirs, performer_dir, explainer_dir,
                        others=other_dirs)
    report_path = stage("report", report.write, performer_dir, explainer_dir)
    export_path = stage("export", export.export, performer_dir, explainer_dir,
                        os.path.join(FLAGS.run_dir, "export"))
    metrics = all_metrics["explainer"]
    summary = {key: metrics[key] for key in SUMMARY_KEYS if key in metrics}
    for name in COMPARISONS:
        summary[f"instability_{name}"] = all_metrics[name]["instability_explainer"]
        summary[f"part_coverage_{name}"] = all_metrics[name]["part_coverage"]
        summary[f"duplicate_filters_{name}"] = all_metrics[name]["duplicate_filters"]
    record = metrics.get("training", {})
    summary["epochs_trained"] = record.get("epochs_trained")
    summary["converged_epoch"] = record.get("converged_epoch")
    summary["filter_loss_weight"] = record.get("filter_loss_weight")
    summary.update((record.get("gradient_ratios") or [{}])[-1])
    summary["stage_seconds"] = stages
    summary["wall_seconds"] = clock.seconds()
    path = os.path.join(FLAGS.run_dir, "summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nDemo finished in {summary['wall_seconds']:.0f} s; summary in {path}")
    print(evaluation.summary_text(all_metrics))
    print("  stages: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in stages.items()))
    print(f"  evaluation: {explainer_dir}/eval/summary.txt")
    print(f"  part report: {report_path}")
    print(f"  SavedModel for TF Serving: {export_path}  (serve it: serving/README.md)")
    print(f"\nInspect training in TensorBoard:\n  .venv/bin/tensorboard --logdir {FLAGS.run_dir}\n")


if __name__ == "__main__":
    app.run(main)
