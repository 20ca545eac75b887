"""A cache of the frozen performer's features in sharded TFRecord files.

The performer is frozen, so its target-layer map, reconstruction targets, pool output, scores and
labels can be computed once and the explainer trained from them. Images are cached as they come
(no flips): flip augmentation is not available when training from the cache.

Format (FORMAT_VERSION 2): one tf.train.Example per image whose features are the raw little-endian
bytes of each array, so a reader parses a whole batch at once (parse_example + decode_raw after
batching) instead of one serialized tensor per example and key.
"""

import json
import os

import numpy as np
import tensorflow as tf

from tf_explainer.progress import cardinality, logged

SPEC_FILE = "cache.json"
FORMAT_VERSION = 2
CACHED_KEYS = ("target", "pool", "scores", "label")  # plus every "recon_<i>"
DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16, "int32": tf.int32}
FLOAT_DTYPES = ("float32", "bfloat16")


def _keys(features):
    return [k for k in features if k in CACHED_KEYS or k.startswith("recon_")]


def _little_endian_rows(array):
    """One bytes string per row of `array`, little-endian whatever the host's byte order."""
    unsigned = np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")
    little = unsigned.astype(unsigned.dtype.newbyteorder("<"), copy=False)
    return [row.tobytes() for row in little.reshape(len(array), -1)]


def write_feature_cache(taps, dataset, out_dir, shards=4, compression=None, dtype="float32"):
    """Runs `taps` (Performer.taps()) over batches of {"image", "label"} and writes one
    tf.train.Example per image, round-robin over `shards` files. compression: None or "GZIP";
    dtype: "float32" or "bfloat16" for the float features. Returns the cache description."""
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {list(FLOAT_DTYPES)}, got {dtype!r}.")
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
            rows = {k: _little_endian_rows(tf.cast(features[k], DTYPES[spec[k]["dtype"]]).numpy())
                    for k in spec}
            for i in range(len(rows["label"])):
                example = tf.train.Example(features=tf.train.Features(feature={
                    k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[rows[k][i]])) for k in spec}))
                writers[count % shards].write(example.SerializeToString())
                count += 1
    finally:
        for writer in writers:
            writer.close()
    if spec is None:
        raise ValueError("write_feature_cache got an empty dataset.")
    description = {"format": FORMAT_VERSION, "keys": spec, "count": count,
                   "files": [os.path.basename(p) for p in paths], "compression": compression}
    with open(os.path.join(out_dir, SPEC_FILE), "w") as f:
        json.dump(description, f, indent=2)
    return description


def read_cache_description(cache_dir):
    """The cache.json of a cache written by write_feature_cache, checked for this format."""
    path = os.path.join(cache_dir, SPEC_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No feature cache in {cache_dir!r} (missing {SPEC_FILE}); "
                                "run tools/cache_features.py first.")
    with open(path) as f:
        description = json.load(f)
    if description.get("format") != FORMAT_VERSION:
        raise ValueError(f"The feature cache in {cache_dir!r} has format "
                         f"{description.get('format', 1)}, this version reads format "
                         f"{FORMAT_VERSION}; rewrite it with tools/cache_features.py.")
    return description


def read_feature_cache(cache_dir, batch_size=None, shuffle_buffer=0, seed=None,
                       drop_remainder=False):
    """Dicts of float32 features (int32 "label") from a cache written above.

    batch_size=None gives single examples; with a batch size, records are batched first and each
    batch is parsed in one go (much cheaper per example), and the batches are prefetched.
    shuffle_buffer > 0 shuffles the serialized records (seeded by `seed`) before parsing.
    Without shuffling, examples come in the order they were written (shards are read
    round-robin, as they were written).
    """
    description = read_cache_description(cache_dir)
    spec = description["keys"]
    files = [os.path.join(cache_dir, name) for name in description["files"]]

    def parse(records):
        raw = tf.io.parse_example(records, {k: tf.io.FixedLenFeature([], tf.string) for k in spec})
        batch_shape = tf.shape(records)
        parsed = {}
        for key, entry in spec.items():
            value = tf.io.decode_raw(raw[key], DTYPES[entry["dtype"]], little_endian=True)
            value = tf.reshape(value, tf.concat([batch_shape, entry["shape"]], axis=0))
            parsed[key] = value if key == "label" else tf.cast(value, tf.float32)
        return parsed

    records = tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda name: tf.data.TFRecordDataset(name, compression_type=description["compression"] or ""),
        cycle_length=len(files), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shuffle_buffer:
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if batch_size is None:
        return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    records = records.batch(batch_size, drop_remainder=drop_remainder)
    return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True).prefetch(tf.data.AUTOTUNE)
