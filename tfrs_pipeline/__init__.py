"""tfrs-pipeline: two-stage recommenders (TFRS retrieval + ranking, session models) served by TF Serving.

TensorFlow Recommenders is written for Keras 2, while TensorFlow 2.16+ resolves ``tf.keras`` to
Keras 3, which breaks TFRS with an obscure error. TensorFlow reads ``TF_USE_LEGACY_KERAS`` lazily,
the first time ``tf.keras`` is touched, so setting it here (before any submodule builds a model)
makes every import path of this package use Keras 2 (``tf-keras``) without the user doing anything.
"""
import os as _os

_os.environ["TF_USE_LEGACY_KERAS"] = "1"
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
