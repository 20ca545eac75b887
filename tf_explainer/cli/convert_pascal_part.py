r"""Convert Pascal-Part annotations into a landmark manifest folder.

tf-explainer convert-pascal-part --annotation_dir=Annotations_Part \
    --image_dir=VOC2010/JPEGImages --out_dir=data/pascal_part
"""

from absl import flags

from tf_explainer.data import pascal_part

FLAGS = flags.FLAGS
flags.DEFINE_string("annotation_dir", None, "Folder of Pascal-Part .mat annotation files.")
flags.DEFINE_string("image_dir", None, "VOC JPEGImages folder holding <imname>.jpg.")
flags.DEFINE_string("out_dir", None, "Output folder for manifest.jsonl and images/.")
flags.DEFINE_list("classes", list(pascal_part.PAPER_CLASSES),
                  "Object classes to keep, or 'all' for every class.")
flags.DEFINE_enum("images", "symlink", ["symlink", "copy"], "Link or copy the images into out_dir.")
flags.mark_flags_as_required(["annotation_dir", "image_dir", "out_dir"])


def main(argv):
    del argv
    classes = None if FLAGS.classes == ["all"] else FLAGS.classes
    counts = pascal_part.convert_pascal_part(FLAGS.annotation_dir, FLAGS.image_dir, FLAGS.out_dir,
                                             classes=classes, images=FLAGS.images)
    print(f"Wrote {FLAGS.out_dir}: {dict(sorted(counts.items()))}")
