"""Warmup requests: the TFRecord of PredictionLogs that TF Serving replays when it loads a version.

The exporter writes them (tf_explainer.export); the contract double and the tests read them here.
"""

import os

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from tf_explainer.export import WARMUP_FILE
MAX_RECORDS = 1000  # TF Serving refuses warmup files with more records


def read_warmup_requests(export_dir) -> list:
    """The PredictionLog records of a version folder ([] when it has no warmup file)."""
    path = os.path.join(export_dir, WARMUP_FILE)
    if not os.path.exists(path):
        return []
    logs = [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(path)]
    if len(logs) > MAX_RECORDS:
        raise ValueError(f"{path} holds {len(logs)} records; TF Serving replays at most "
                         f"{MAX_RECORDS}.")
    return logs
