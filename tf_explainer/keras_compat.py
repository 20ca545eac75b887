"""The only place tf_explainer reaches into private Keras attributes.

Everything else uses public Keras APIs and calls these functions where no public API does the
job. Each function names the private attribute it reads, why no public API serves, and the Keras
versions it was checked on. If an installed Keras lacks the attribute, the function raises
IncompatibleKerasError naming it; tests/test_keras_compat.py checks every one of them.
"""

from typing import NamedTuple

import keras

# Keras releases on which every workaround below was run (the one pinned in setup.cfg).
CHECKED_KERAS_VERSIONS = ("3.15.1",)


class IncompatibleKerasError(RuntimeError):
    """The installed Keras lacks a private attribute that tf_explainer relies on."""


def private_attribute(owner, attribute: str):
    """owner.attribute, or an IncompatibleKerasError that names it and the Keras versions."""
    try:
        return getattr(owner, attribute)
    except AttributeError:
        raise IncompatibleKerasError(
            f"tf_explainer needs the private Keras attribute {type(owner).__name__}.{attribute}, "
            f"which Keras {keras.__version__} does not have (checked on Keras "
            f"{', '.join(CHECKED_KERAS_VERSIONS)}). Install a checked version or adapt "
            "tf_explainer/keras_compat.py.") from None


class LayerCall(NamedTuple):
    """One call of a layer (or nested model) in a graph: the symbolic tensors it took and gave."""

    operation: keras.Operation
    inputs: list
    outputs: list


def layer_calls(model) -> list:
    """Every layer call in the graph of a Functional or Sequential model, inputs first.

    Private attribute: Function._nodes_by_depth (the graph's nodes grouped by depth; each node's
    `operation`, `input_tensors` and `output_tensors` are public properties of Keras' Node).
    Why no public API serves: Functional.operations lists layers, not calls; Layer.input and
    Layer.output give only a layer's first call, which for a layer shared in the graph, or one
    reused from another model, is the wrong one; get_config()'s inbound-node lists give names
    without the tensors and their shapes, and fail on layers without a serialisable config.
    A Sequential's graph is read through a public keras.Function over its public inputs and
    outputs. Checked on Keras 3.15.1.
    """
    graph = model if isinstance(model, keras.Function) else keras.Function(model.inputs,
                                                                          model.outputs)
    by_depth = private_attribute(graph, "_nodes_by_depth")
    return [LayerCall(node.operation, list(node.input_tensors), list(node.output_tensors))
            for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def build_training_state(model: keras.Model, data_batch) -> None:
    """Create a compiled model's loss, metric and optimizer variables from one data batch.

    A custom loop that traces model.train_step inside strategy.run must create these first:
    creating variables inside the traced step fails. model.fit does it before tracing.
    Private attribute: Trainer._symbolic_build(data_batch=...), what fit and evaluate call.
    Why no public API serves: optimizer.build() is public, but the compiled loss and metrics
    are only built by running a real step (train_on_batch, evaluate), which would change the
    weights or the metric totals. Checked on Keras 3.15.1.
    """
    private_attribute(model, "_symbolic_build")(data_batch=data_batch)
