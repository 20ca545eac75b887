"""A cache of the frozen performer's features in sharded TFRecord files (SPEC 6.2).

The performer is frozen, so its target-layer map, reconstruction targets, pool output, scores and
labels can be computed once and the explainer trained from them. Images are cached as they come
(no flips): flip augmentation is not available when training from the cache.
"""

import json
import os

import tensorflow as tf

from tf_explainer.progress import cardinality, logged

SPEC_FILE = "cache.json"
CACHED_KEYS = ("target", "pool", "scores", "label")  # plus every "recon_<i>"
DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16}


def _keys(features):
    return [k for k in features if k in CACHED_KEYS or k.startswith("recon_")]


def write_feature_cache(taps, dataset, out_dir, shards=4, compression=None, dtype="float32"):
    """Runs `taps` (Performer.taps()) over batches of {"image", "label"} and writes one
    tf.train.Example per image, round-robin over `shards` files. compression: None or "GZIP";
    dtype: "float32" or "bfloat16" for the float features. Returns the cache description."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    os.makedirs(out_dir, exist_ok=True)
    options = tf.io.TFRecordOptions(compression_type=compression or "")
    paths = [os.path.join(out_dir, f"features-{i:05d}-of-{shards:05d}.tfrecord") for i in range(shards)]
    writers = [tf.io.TFRecordWriter(p, options) for p in paths]
    spec, count = None, 0
    try:
        for batch in logged(dataset, "Feature cache", cardinality(dataset)):
            features = dict(taps(batch["image"], training=False))
            features["label"] = batch["label"]
            if spec is None:
                spec = {k: {"shape": list(features[k].shape[1:]), "dtype": "int32" if k == "label" else dtype}
                        for k in _keys(features)}
            for i in range(int(batch["label"].shape[0])):
                example = tf.train.Example(features=tf.train.Features(feature={
                    k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[tf.io.serialize_tensor(
                        tf.cast(features[k][i], DTYPES.get(spec[k]["dtype"], tf.int32))).numpy()]))
                    for k in spec}))
                writers[count % shards].write(example.SerializeToString())
                count += 1
    finally:
        for writer in writers:
            writer.close()
    if spec is None:
        raise ValueError("write_feature_cache got an empty dataset.")
    description = {"keys": spec, "count": count, "files": [os.path.basename(p) for p in paths],
                   "compression": compression}
    with open(os.path.join(out_dir, SPEC_FILE), "w") as f:
        json.dump(description, f, indent=2)
    return description


def read_feature_cache(cache_dir):
    """Unbatched dicts of float32 features (int32 "label") from a cache written above, in the
    order they were written (shards are read round-robin, as they were written)."""
    path = os.path.join(cache_dir, SPEC_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No feature cache in {cache_dir!r} (missing {SPEC_FILE}); "
                                "run tools/cache_features.py first.")
    with open(path) as f:
        description = json.load(f)
    spec = description["keys"]
    files = [os.path.join(cache_dir, name) for name in description["files"]]

    def parse(record):
        raw = tf.io.parse_single_example(
            record, {k: tf.io.FixedLenFeature([], tf.string) for k in spec})
        parsed = {}
        for key, entry in spec.items():
            stored = DTYPES.get(entry["dtype"], tf.int32)
            value = tf.ensure_shape(tf.io.parse_tensor(raw[key], stored), entry["shape"])
            parsed[key] = value if key == "label" else tf.cast(value, tf.float32)
        return parsed

    records = tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda name: tf.data.TFRecordDataset(name, compression_type=description["compression"] or ""),
        cycle_length=len(files), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
