"""The end-to-end job on the embedded default: performer, explainer, measurements, report,
SavedModel export, summary.

  python -m tools.demo --flagfile=configs/demo.flags      (what `make demo` runs)
"""

import json
import os

from absl import app, flags

from tools import common, evaluate, export, report, train_explainer, train_performer
from tools.common import FLAGS
from tf_explainer.strategy import is_chief

flags.DEFINE_string("run_dir", "runs/demo", "Where the demo writes everything.")

SUMMARY_KEYS = ("performer_accuracy", "reconstructed_accuracy", "p", "instability_performer_target",
                "instability_performer_top", "instability_explainer")


def main(argv):
    del argv
    clock = common.Stopwatch()
    performer_dir = os.path.join(FLAGS.run_dir, "performer")
    explainer_dir = os.path.join(FLAGS.run_dir, "explainer")
    baseline_dir = os.path.join(FLAGS.run_dir, "explainer_cls")
    train_performer.train(performer_dir)
    train_explainer.train(performer_dir, explainer_dir)
    train_explainer.train(performer_dir, baseline_dir, objective="classification")
    if not is_chief(common.strategy()):  # under multi_worker the other workers only train
        return
    metrics = evaluate.evaluate_dirs(performer_dir, explainer_dir, baseline_dir)["explainer"]
    report_path = report.write(performer_dir, explainer_dir)
    export_path = export.export(performer_dir, explainer_dir, os.path.join(FLAGS.run_dir, "export"))
    summary = {key: metrics[key] for key in SUMMARY_KEYS if key in metrics}
    summary["wall_seconds"] = clock.seconds()
    path = os.path.join(FLAGS.run_dir, "summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nDemo finished in {summary['wall_seconds']:.0f} s; summary in {path}")
    print(f"  performer accuracy       {summary['performer_accuracy']:.3f}")
    print(f"  reconstructed accuracy   {summary['reconstructed_accuracy']:.3f}  (head on explainer's fc7)")
    print(f"  p (interpretable share)  {summary['p']:.3f}")
    for key, label in (("instability_performer_target", "performer target layer"),
                       ("instability_performer_top", "performer top conv"),
                       ("instability_explainer", "explainer conv-interp-2")):
        if key in summary:
            print(f"  location instability     {summary[key]:.4f}  {label}")
    print(f"  evaluation (with the Explainer+cls baseline): {explainer_dir}/eval/summary.txt")
    print(f"  part report: {report_path}")
    print(f"  SavedModel for TF Serving: {export_path}  (serve it: serving/README.md)")
    print(f"\nInspect training in TensorBoard:\n  .venv/bin/tensorboard --logdir {FLAGS.run_dir}\n")


if __name__ == "__main__":
    app.run(main)
