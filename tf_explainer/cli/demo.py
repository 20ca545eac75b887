"""The end-to-end job on the embedded default: performer, explainer, measurements, report,
SavedModel export, summary.

  tf-explainer demo --preset=demo          (what `make demo` runs)
  tf-explainer demo --preset=lsp           (a landmark manifest folder; see README.md)

Every model directory gets a flags.txt that reruns its own step, <run_dir>/flags.txt the demo.
"""

import json
import os
import sys

from absl import flags

from tf_explainer.cli import (cache_features, common, evaluate, export, report, train_explainer,
                   train_performer)
from tf_explainer.cli.common import FLAGS
from tf_explainer.strategy import is_chief

flags.adopt_module_key_flags(common)
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


# Rows of the final table: (name in the metrics, label).
TABLE_ROWS = (("explainer", "method (explainer)"), ("explainer_cls", "Explainer+cls baseline"),
              ("no_filter_loss", "no filter loss"), ("no_masks", "no masks"))


def results_table(all_metrics, stages, wall_seconds):
    """The demo's outcome in a few lines: method, baseline and ablations side by side with the
    epochs each trained (the comparisons train fewer), the performer's own figures, and the time
    of each stage."""
    metrics = all_metrics["explainer"]
    lines = [f"{'':<24}{'instability':>12}{'coverage':>10}{'duplicates':>12}{'recon. error':>14}"
             f"{'epochs':>8}"]
    for name, label in TABLE_ROWS:
        row = all_metrics[name]
        lines.append(f"{label:<24}{row['instability_explainer']:>12.4f}{row['part_coverage']:>10.2f}"
                     f"{row['duplicate_filters']:>12.2f}"
                     f"{100 * row['reconstructed_error_increase']:>+9.2f} pts"
                     f"{row.get('training', {}).get('epochs_trained', '-'):>8}")
    lines.append(f"{'performer top conv':<24}{metrics['instability_performer_top']:>12.4f}"
                 f"{metrics.get('part_coverage_top', float('nan')):>10.2f}"
                 f"{metrics.get('duplicate_filters_top', float('nan')):>12.2f}")
    if "instability_fixed_point" in metrics:
        lines.append(f"{'best fixed pixel':<24}{metrics['instability_fixed_point']:>12.4f}")
    record = metrics.get("training", {})
    converged = record.get("converged_epoch")
    lines.append(f"performer accuracy {1 - metrics['performer_error']:.4f}, p {metrics['p']:.3f}, "
                 f"lambda {record.get('filter_loss_weight', float('nan')):.4g}, "
                 f"{record.get('epochs_trained')} of {record.get('max_epochs')} epochs "
                 f"({f'converged at epoch {converged}' if converged else 'not on a plateau'})")
    lines.append("")
    lines.append(f"Time: {wall_seconds:.0f} s = " + " | ".join(
        f"{name} {seconds:.0f} s" for name, seconds in stages.items()))
    return "\n".join(lines)


def main(argv):
    del argv
    clock = common.Stopwatch()
    stages = {}
    chief = is_chief(common.strategy())
    comparison_epochs = min(FLAGS.epochs, FLAGS.comparison_epochs)
    plan = ["performer", "feature cache", "explainer", *COMPARISONS, "evaluation", "report",
            "export"]

    def stage(name, what, fn, *args, estimate=None, **kwargs):
        """Runs one step under a numbered header; `estimate`: its expected seconds, if known."""
        eta = f"; about {estimate:.0f} s" if estimate else ""
        print(f"\n[{plan.index(name) + 1}/{len(plan)}] {name}: {what}{eta}", flush=True)
        start = common.Stopwatch()
        result = fn(*args, **kwargs)
        stages[name] = start.seconds()
        print(f"[{plan.index(name) + 1}/{len(plan)}] {name} done in {stages[name]:.0f} s",
              flush=True)
        return result

    if chief:
        common.write_flags(FLAGS.run_dir, __name__)
    performer_dir = os.path.join(FLAGS.run_dir, "performer")
    explainer_dir = os.path.join(FLAGS.run_dir, "explainer")
    other_dirs = {name: os.path.join(FLAGS.run_dir, name) for name in COMPARISONS}
    stage("performer", f"training {FLAGS.performer} for {FLAGS.performer_epochs} epochs (each "
          "epoch line shows the time left)", train_performer.train, performer_dir)
    if not FLAGS.feature_cache:
        FLAGS.feature_cache = os.path.join(FLAGS.run_dir, "cache")
    stage("feature cache", "the performer's features of the training images, computed once",
          cache_features.cache, performer_dir, FLAGS.feature_cache)
    record = stage("explainer", f"the method, at most {FLAGS.epochs} epochs (stops on a plateau)",
                   train_explainer.train, performer_dir, explainer_dir)
    seconds_per_epoch = (stages["explainer"] / record["epochs_trained"]
                         if record and record["epochs_trained"] else None)
    for name, overrides in COMPARISONS.items():
        stage(name, f"comparison run, at most {comparison_epochs} epochs", train_explainer.train,
              performer_dir, other_dirs[name], epochs=comparison_epochs,
              estimate=seconds_per_epoch and seconds_per_epoch * comparison_epochs, **overrides)
    if not chief:  # under multi_worker the other workers only train
        return
    all_metrics = stage("evaluation", "every explainer on the test split",
                        evaluate.evaluate_dirs, performer_dir, explainer_dir, others=other_dirs)
    report_path = stage("report", "the HTML part report", report.write, performer_dir,
                        explainer_dir)
    export_path = stage("export", "SavedModel for TensorFlow Serving", export.export,
                        performer_dir, explainer_dir, os.path.join(FLAGS.run_dir, "export"))
    metrics = all_metrics["explainer"]
    summary = {key: metrics[key] for key in SUMMARY_KEYS if key in metrics}
    for name in COMPARISONS:
        summary[f"instability_{name}"] = all_metrics[name]["instability_explainer"]
        summary[f"part_coverage_{name}"] = all_metrics[name]["part_coverage"]
        summary[f"duplicate_filters_{name}"] = all_metrics[name]["duplicate_filters"]
        summary[f"epochs_trained_{name}"] = all_metrics[name].get("training", {}).get(
            "epochs_trained")
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
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    print(f"\nDemo finished. Results on the test split (docs/method.md explains each measure):\n")
    print(results_table(all_metrics, stages, summary["wall_seconds"]))
    print(f"\n  all numbers: {path}; every measurement: {explainer_dir}/eval/summary.txt")
    print(f"  part report: {report_path}")
    print(f"  SavedModel for TF Serving: {export_path}  (serve it: serving/README.md)")
    print(f"  training curves: {tensorboard} --logdir {FLAGS.run_dir}\n")
