"""Batch statistics that mean the same on one device and across replicas.

Under tf.distribute each replica sees a slice of the global batch. Statistics that the method
takes over "the batch" (partition functions, channel means, class means) are reduced across
replicas here so a mirrored run follows the single-device run step for step.
"""

import tensorflow as tf


def _replica_context():
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    return ctx


def global_sum(*tensors):
    """Sums each tensor over replicas (identity on one device)."""
    ctx = _replica_context()
    if ctx is None:
        return tensors if len(tensors) > 1 else tensors[0]
    reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(tensors))
    return tuple(reduced) if len(tensors) > 1 else reduced[0]


def global_batch(tensor):
    """Concatenates a per-replica batch tensor over replicas along axis 0."""
    ctx = _replica_context()
    if ctx is None:
        return tensor
    return ctx.all_gather(tensor, axis=0)


def global_batch_size(batch_size):
    """The number of examples in the global batch, as float32."""
    return global_sum(tf.cast(batch_size, tf.float32))


def num_replicas():
    ctx = tf.distribute.get_replica_context()
    return 1 if ctx is None else ctx.num_replicas_in_sync
