import logging

import tensorflow as tf

from tf_explainer.progress import cardinality, logged


def test_logged_yields_everything_and_reports_rate_and_eta(caplog):
    with caplog.at_level(logging.INFO, logger="absl"):
        assert list(logged(range(5), "Work", total=5, every_seconds=0.0)) == list(range(5))
    lines = [r.getMessage() for r in caplog.records]
    assert any("Work: 2/5 batches" in line and "ETA" in line for line in lines)
    assert lines[-1].startswith("Work: done, 5 batches")


def test_cardinality_known_and_unknown():
    assert cardinality(tf.data.Dataset.range(10).batch(3)) == 4
    assert cardinality(tf.data.Dataset.range(10).filter(lambda x: x > 2)) is None
