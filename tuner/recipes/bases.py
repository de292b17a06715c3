"""The frozen bases a head recipe can sit on: facts about each ``keras.applications`` model.

Everything here is plain data, so that specs are checked, cache keys computed
and weights looked for without TensorFlow. :mod:`tuner.training.model` builds the bases.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BASES", "Base"]

KERAS_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Base:
    """One frozen base: how to build it, what it outputs, how it wants its input."""

    name: str  # the value of model.base
    application: str  # the keras.applications constructor
    feature_dim: int  # width of the pooled output
    min_size: int  # smallest input height and width Keras accepts
    preprocessing: str  # what happens to raw 0-255 RGB before the base; part of the cache key
    imagenet_file: str  # the no-top ImageNet weights file Keras downloads
    imagenet_folder: str  # its folder under KERAS_WEIGHTS

    @property
    def display(self) -> str:
        return self.application

    @property
    def weights_file(self) -> str:
        """How every message names the base's weights file: one name, the same everywhere."""
        return f"the {self.display} ImageNet weights file ({self.imagenet_file})"

    @property
    def identity(self) -> str:
        """The architecture behind a feature vector, for the cache key."""
        return f"keras.applications.{self.application}(include_top=False)+GlobalAveragePooling2D"

    @property
    def imagenet_url(self) -> str:
        return f"{KERAS_WEIGHTS}{self.imagenet_folder}/{self.imagenet_file}"


BASES: dict[str, Base] = {
    base.name: base
    for base in (
        Base(
            "xception",
            "Xception",
            2048,
            71,
            "xception: x/127.5-1, bilinear resize, no crop",
            "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "xception",
        ),
        Base(
            "efficientnetv2b0",
            "EfficientNetV2B0",
            1280,
            32,
            "efficientnetv2: rescaling and normalization inside the base, bilinear resize",
            "efficientnetv2-b0_notop.h5",
            "efficientnet_v2",
        ),
        Base(
            "mobilenetv3large",
            "MobileNetV3Large",
            960,
            32,
            "mobilenetv3: x/127.5-1 inside the base, bilinear resize",
            "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
            "mobilenet_v3",
        ),
        Base(
            "resnet50",
            "ResNet50",
            2048,
            32,
            "caffe: RGB to BGR, minus the ImageNet mean, bilinear resize",
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "resnet",
        ),
    )
}
