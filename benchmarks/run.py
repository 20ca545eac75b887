"""`make bench`: runs the benchmarks and writes one JSON file per benchmark under --output_dir.

  python -m benchmarks.run                  # everything
  python -m benchmarks.run --only=training  # one results file

training.json: explainer training speed (benchmarks/training.py documents every key).
serving.json: latency of the exported signatures through REST and gRPC against the contract
double (benchmarks/serving.py documents every key).
Timings on a machine shared with other jobs are noisy: each figure is a median over rounds and
comes with its spread.
"""

import json
import os

from absl import app, flags

from benchmarks import serving, training

flags.DEFINE_string("output_dir", "benchmarks/results", "Where the JSON files go.")
flags.DEFINE_list("only", None, "Run only these benchmarks (names of BENCHMARKS).")
flags.DEFINE_integer("images_per_epoch", 1024, "Images in the default network's timed epoch.")
flags.DEFINE_integer("step_rounds", 40, "Timing rounds of the explainer steps, per network.")
flags.DEFINE_integer("jpeg_side", 256, "Side of the JPEGs in the manifest folder that the "
                     "default network's uncached epoch decodes.")
flags.DEFINE_boolean("full_vgg16", True, "Also time the built-in VGG-16 (224 x 224) in-step.")
FLAGS = flags.FLAGS


def training_results():
    return training.benchmark(training.Config(
        images_per_epoch=FLAGS.images_per_epoch, default_step_rounds=FLAGS.step_rounds,
        vgg16_step_rounds=FLAGS.step_rounds, jpeg_side=FLAGS.jpeg_side,
        include_full_vgg16=FLAGS.full_vgg16))


# Results file name -> function returning its JSON-serialisable dict.
BENCHMARKS = {"training": training_results, "serving": lambda: serving.run(output=None)}


def write_results(output_dir, name, results):
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"{path}:\n{json.dumps(results, indent=2)}")


def main(argv):
    del argv
    unknown = set(FLAGS.only or ()) - set(BENCHMARKS)
    if unknown:
        raise app.UsageError(f"Unknown benchmarks {sorted(unknown)}; have {sorted(BENCHMARKS)}.")
    for name, run in BENCHMARKS.items():
        if not FLAGS.only or name in FLAGS.only:
            write_results(FLAGS.output_dir, name, run())


if __name__ == "__main__":
    app.run(main)
