"""The Keras internals tf_explainer relies on (tf_explainer.keras_compat), on small real models.

If an upgraded Keras lacks one, test_keras_has_what_the_workaround_needs names the attribute,
the installed Keras version and the versions the workaround was checked on.
"""

import keras
import numpy as np
import pytest

from tf_explainer import keras_compat


def _functional():
    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv")(image)
    return keras.Model(image, keras.layers.ReLU(name="relu")(x), name="functional")


def _sequential():
    return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, name="conv"),
                             keras.layers.ReLU(name="relu")], name="sequential")


def _compiled_dense(kind):
    """A compiled 4 -> 2 Dense regressor, as a Sequential or a Functional model."""
    if kind == "sequential":
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    else:
        features = keras.Input((4,))
        model = keras.Model(features, keras.layers.Dense(2)(features))
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return model


def _a_node():
    """A node of a real graph (Keras' Node class itself is not public)."""
    by_depth = keras_compat.private_attribute(_functional(), "_nodes_by_depth")
    return by_depth[max(by_depth)][0]


def _ids(tensors):
    return [id(t) for t in tensors]


# (workaround in keras_compat, the Keras attribute it reads, a real object that must have it)
WORKAROUNDS = [
    ("layer_calls", "Function._nodes_by_depth", _functional),
    ("layer_calls", "Node.operation", _a_node),
    ("layer_calls", "Node.input_tensors", _a_node),
    ("layer_calls", "Node.output_tensors", _a_node),
    ("build_training_state", "Trainer._symbolic_build", lambda: _compiled_dense("sequential")),
]


@pytest.mark.parametrize("workaround, attribute, make_owner", WORKAROUNDS,
                         ids=[f"{w}-{a}" for w, a, _ in WORKAROUNDS])
def test_keras_has_what_the_workaround_needs(workaround, attribute, make_owner):
    owner = make_owner()
    if not hasattr(owner, attribute.split(".")[1]):
        pytest.fail(
            f"Keras {keras.__version__} has no {attribute} (found no such attribute on "
            f"{type(owner).__name__}); tf_explainer.keras_compat.{workaround} relies on it. It was "
            f"checked on Keras {', '.join(keras_compat.CHECKED_KERAS_VERSIONS)}: pin one of "
            f"those or adapt {workaround}.")


def test_a_missing_attribute_is_named_with_the_keras_version():
    model = _functional()
    graph = keras.Function(model.inputs, model.outputs)
    del graph._nodes_by_depth
    with pytest.raises(keras_compat.IncompatibleKerasError,
                       match=rf"Function\._nodes_by_depth.*Keras {keras.__version__}.*checked on"):
        keras_compat.layer_calls(graph)


def _assert_calls_form_the_graph(model, calls):
    """Inputs first: every call takes the model's inputs or tensors of earlier calls."""
    known = {id(t) for t in model.inputs}
    for call in calls:
        assert all(id(t) in known for t in call.inputs), call.operation.name
        known.update(id(t) for t in call.outputs)
    assert all(id(t) in known for t in model.outputs)


@pytest.mark.parametrize("make_model", [_functional, _sequential])
def test_layer_calls_of_functional_and_sequential_models(make_model):
    model = make_model()
    calls = keras_compat.layer_calls(model)
    assert [type(c.operation) for c in calls] == [keras.layers.InputLayer, keras.layers.Conv2D,
                                                  keras.layers.ReLU]
    assert [c.operation for c in calls[1:]] == model.layers[-2:]
    assert _ids(calls[0].outputs) == _ids(model.inputs)
    assert _ids(calls[-1].outputs) == _ids(model.outputs)
    assert tuple(calls[1].outputs[0].shape) == tuple(model.get_layer("conv").output.shape)
    _assert_calls_form_the_graph(model, calls)


def test_layer_calls_tell_apart_the_calls_of_a_shared_layer():
    """What Layer.input/output cannot: the second call of a layer has its own tensors."""
    image = keras.Input((8, 8, 2))
    shared = keras.layers.Conv2D(2, 3, padding="same", name="shared")
    model = keras.Model(image, shared(shared(image)))
    calls = [c for c in keras_compat.layer_calls(model) if c.operation is shared]
    assert len(calls) == 2
    assert _ids(calls[0].inputs) == [id(image)]
    assert _ids(calls[1].inputs) == _ids(calls[0].outputs)
    assert _ids(calls[1].outputs) == _ids(model.outputs)
    assert shared.output is calls[0].outputs[0]  # the public attribute sees the first call only


def test_layer_calls_of_a_model_with_nested_models():
    """A nested Sequential and a nested Functional are one call each, on the outer tensors."""
    inner_sequential, inner_functional = _sequential(), _functional()
    image = keras.Input((8, 8, 3))
    features = inner_functional(image)
    merged = keras.layers.Concatenate(name="concat")(
        [keras.layers.ZeroPadding2D(1, name="pad")(inner_sequential(image)), features])
    outer = keras.Model(image, merged)
    calls = {c.operation.name: c for c in keras_compat.layer_calls(outer)}
    assert set(calls) == {outer.layers[0].name, "sequential", "functional", "pad", "concat"}
    assert _ids(calls["sequential"].inputs) == _ids(calls["functional"].inputs) == [id(image)]
    assert _ids(calls["functional"].outputs) == [id(features)]
    assert calls["concat"].inputs[1] is features
    _assert_calls_form_the_graph(outer, keras_compat.layer_calls(outer))
    for inner in (inner_sequential, inner_functional):
        _assert_calls_form_the_graph(inner, keras_compat.layer_calls(inner))


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_build_training_state_creates_the_state_without_a_step(kind):
    """What model.fit does before tracing its step: optimizer and compiled-metric variables."""
    model = _compiled_dense(kind)
    weights = [w.numpy() for w in model.weights]
    metric_variables = len(model.metrics_variables)
    assert not model.optimizer.built
    batch = (np.ones((8, 4), np.float32), np.zeros((8, 2), np.float32))
    keras_compat.build_training_state(model, batch)
    assert model.optimizer.built and model.optimizer.variables
    assert int(model.optimizer.iterations.numpy()) == 0
    assert len(model.metrics_variables) > metric_variables  # the compiled "mae" metric's
    for before, after in zip(weights, model.weights, strict=True):
        np.testing.assert_array_equal(after.numpy(), before)
    logs = model.train_on_batch(*batch, return_dict=True)
    assert set(logs) == {"loss", "mae"} and int(model.optimizer.iterations.numpy()) == 1
