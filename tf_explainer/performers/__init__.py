"""Built-in performers by name, any Keras model as a performer, and receptive-field geometry."""

from typing import Optional, Sequence

from tf_explainer.performers.alexnet import build_alexnet
from tf_explainer.performers.geometry import ReceptiveField, receptive_field
from tf_explainer.performers.keras_model import from_keras_model, identity_preprocess
from tf_explainer.performers.small_vgg import build_small_vgg, scale_to_unit_range
from tf_explainer.performers.spec import LayerNotFoundError, Performer
from tf_explainer.performers.vgg import build_vgg16, build_vgg_m, build_vgg_s, caffe_preprocess

_BUILDERS = {
    "small_vgg": build_small_vgg,
    "alexnet": build_alexnet,
    "vgg_m": build_vgg_m,
    "vgg_s": build_vgg_s,
    "vgg16": build_vgg16,
}
PERFORMERS = list(_BUILDERS)


def scale_to_zero_one(images):
    """[0, 255] RGB -> [0, 1]."""
    return identity_preprocess(images) / 255.0


# Input preprocessing of one's own Keras performer, by name: a saved performer (performer.json)
# records the name, since a function cannot be saved.
PREPROCESSING = {
    "none": identity_preprocess,          # [0, 255] RGB as it is (models that rescale inside)
    "zero_one": scale_to_zero_one,        # [0, 1]
    "minus_one_one": scale_to_unit_range,  # [-1, 1]
    "caffe": caffe_preprocess,            # keras.applications VGG: BGR minus the ImageNet mean
}


def preprocessing_name(preprocess) -> str:
    """The PREPROCESSING name of `preprocess`; ValueError for any other function."""
    for name, function in PREPROCESSING.items():
        if function is preprocess:
            return name
    raise ValueError(f"{preprocess!r} is not one of the named preprocessings {list(PREPROCESSING)}; "
                     "a saved performer records its preprocessing by name.")


def build_performer(name: str, num_classes: Optional[int],
                    class_names: Optional[Sequence[str]] = None, input_size=None,
                    weights_path=None) -> Performer:
    """A built-in performer with a num_classes head (random weights unless weights_path).

    input_size: int or (height, width), default the network's own (64, 227 or 224).
    weights_path: a local weights file (.weights.h5 / .keras of this model; for vgg16 also the
    keras-applications .h5 file); nothing is ever downloaded.
    """
    if name not in _BUILDERS:
        raise ValueError(f"Unknown performer {name!r}; built-in performers: {PERFORMERS}.")
    return _BUILDERS[name](num_classes, class_names=class_names, input_size=input_size,
                           weights_path=weights_path)


__all__ = ["PERFORMERS", "PREPROCESSING", "LayerNotFoundError", "Performer", "ReceptiveField",
           "build_performer", "from_keras_model", "preprocessing_name", "receptive_field"]
