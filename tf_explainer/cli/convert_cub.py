"""Convert CUB-200-2011 into a landmark manifest folder.

tf-explainer convert-cub --cub_dir=CUB_200_2011 --out_dir=data/cub
"""

from absl import flags

from tf_explainer.data import cub

FLAGS = flags.FLAGS
flags.DEFINE_string("cub_dir", None, "CUB_200_2011 folder (images.txt, parts/, images/, ...).")
flags.DEFINE_string("out_dir", None, "Output folder for manifest.jsonl and images/.")
flags.DEFINE_list("parts", ["back:back", "forehead:head", "tail:tail"],
                  "CUB part:landmark pairs to keep, or 'all' for every part (snake_case names).")
flags.DEFINE_string("label", "bird", "Label for every image; 'species' labels each image by class.")
flags.DEFINE_enum("images", "symlink", ["symlink", "copy"], "Link or copy the images into out_dir.")
flags.mark_flags_as_required(["cub_dir", "out_dir"])


def main(argv):
    del argv
    if FLAGS.parts == ["all"]:
        parts = cub.all_parts(FLAGS.cub_dir)
    else:
        parts = dict(p.split(":", 1) if ":" in p else (p, p) for p in FLAGS.parts)
    label = None if FLAGS.label == "species" else FLAGS.label
    counts = cub.convert_cub(FLAGS.cub_dir, FLAGS.out_dir, parts=parts, label=label,
                             images=FLAGS.images)
    print(f"Wrote {counts['images']} images to {FLAGS.out_dir}: {dict(sorted(counts.items()))}")
