"""The four chapter-5 recipes, each one call returning a :class:`~minicnn.train.History`.

>>> history = fine_tune(VGG16(include_top=False, weights="imagenet"), train, val,
...                     unfreeze_from="block5_conv1", augment=ImageAugmenter(rotation_range=40, ...),
...                     preprocess=lambda x: preprocess_input(x, "caffe"))
>>> history.trainer.evaluate(test)     # the trained model: history.trainer.variables

Datasets are re-iterables of ``(x, y)`` batches in pixel space (:func:`minicnn.data.from_arrays`,
``image_dataset_from_directory``); ``augment`` (an ``ImageAugmenter``, training data only) runs
before ``preprocess`` (the base's input scaling), batch by batch on the device. Pretrained models
are ``Sequential([base, *head])``, named as in the lecture (``vgg16``, ``flatten``, ``dense``,
``dropout``, ``dense_1``). Training goes through :class:`minicnn.train.Trainer`, whose step
differentiates only the trainable parameters and runs frozen BatchNormalization in inference mode.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from minicnn import inspector
from minicnn.data import from_arrays
from minicnn.layers import Dense, Dropout, Flatten, GlobalAveragePooling2D, Sequential
from minicnn.train import History, Trainer, optimizers
from minicnn.transfer.features import extract_features
from minicnn.masks import keras_layers, trainable_mask
from minicnn.models import architecture
from minicnn.models.inception_v3 import InceptionV3
from minicnn.weights.imagenet import preprocess_input
from minicnn.weights.pretrained import graft, init, preprocessing

__all__ = ["train_from_scratch", "feature_extraction", "feature_extraction_with_augmentation", "fine_tune",
           "fine_tune_inception_v3",
           "default_head", "pretrained_model", "named_base", "default_unfreeze_from"]


def default_head(classes: int = 1) -> list[nn.Module]:
    """The lecture's classifier: Flatten, Dense(256, relu), Dropout(0.5), then a sigmoid unit
    (``classes=1``, binary) or a softmax over ``classes``."""
    return [Flatten(), Dense(256, activation="relu"), Dropout(0.5),
            Dense(classes, activation="sigmoid" if classes == 1 else "softmax")]


def _loss(classes: int) -> str:
    return "binary_crossentropy" if classes == 1 else "sparse_categorical_crossentropy"


def _optimizer(optimizer, learning_rate: float) -> dict:
    """Trainer arguments: a Keras optimizer name at ``learning_rate`` (kept as a name, so the trainer can
    rebuild it, e.g. ``set_trainable(mask, learning_rate=1e-5)``), or an optax transform as given (its own rate)."""
    if isinstance(optimizer, str):
        return {"optimizer": optimizer, "optimizer_kwargs": {"learning_rate": learning_rate}}
    return {"optimizer": optimizer}


def _prepared(data, augment=None, preprocess=None, seed: int = 0):
    """``data`` with ``augment`` (keyed from ``seed``) then ``preprocess`` applied to every batch's x."""
    if data is None:
        return None
    if (augment or preprocess) and not hasattr(data, "map"):
        raise TypeError(f"augment/preprocess need a minicnn dataset (from_arrays, image_dataset_from_directory), "
                        f"got {type(data).__name__}")
    if augment is not None:
        data = data.map(augment, seed=seed)
    return data if preprocess is None else data.map(preprocess)


def _first_x(data):
    """The first batch's x (a peek: a minicnn dataset's epochs do not depend on it). The iterator is closed
    at once, so an image folder stops decoding ahead."""
    batches = iter(data)
    try:
        batch = next(batches)
    finally:
        getattr(batches, "close", lambda: None)()
    return jnp.asarray(batch[0] if isinstance(batch, (tuple, list)) else batch)


def pretrained_model(base: nn.Module, x, variables=None, head: Sequence[nn.Module] | None = None,
                     classes: int = 1, seed: int = 0):
    """``(Sequential([base, *head]), its variables)`` for inputs like ``x`` (N, H, W, C).

    The base's variables are ``variables`` when given (e.g. ported weights), else what
    :func:`minicnn.init` loads for it (pretrained with ``weights="imagenet"``); the head is
    initialised from ``seed``.
    """
    model = Sequential([base, *(default_head(classes) if head is None else head)])
    keys = {"params": jax.random.key(seed), "dropout": jax.random.key(seed)}
    if variables is None:
        return model, init(model, keys, x)
    name = model.layer_names()[0]
    # graft checks every leaf against the model's shapes; np.empty only reserves the memory
    shapes = jax.tree_util.tree_map(lambda s: np.empty(s.shape, s.dtype), inspector.abstract_variables(model, x))
    placed = graft(shapes, (name,), variables, "pretrained_model(variables=...)")
    given = {col: {name: tree[name]} for col, tree in placed.items() if name in tree}
    return model, _merge(given, jax.device_get(_init_head(model, name)(given, keys, x)))


def _init_head(model: Sequential, base_name: str):
    """A jitted ``(given, keys, x) -> the head's fresh variables``: ``apply`` with every collection mutable
    initialises the parameters ``given`` lacks, exactly as ``model.init`` would (same paths, same keys),
    and returns only those, so XLA drops the base's forward and its random initialisation is never
    compiled (a jitted ``model.init`` of MobileNet took ~9 s of CPU to compile)."""
    def head(given, keys, x):
        new = model.apply(given, x, rngs=keys, mutable=True)[1]
        return {col: {k: v for k, v in tree.items() if k != base_name} for col, tree in new.items()}
    return jax.jit(head)


def _merge(a: dict, b: dict) -> dict:
    """Collections of ``a`` and ``b`` (disjoint layer names) merged: ``{"params": {**a, **b}, ...}``."""
    return {col: {**a.get(col, {}), **b.get(col, {})} for col in dict.fromkeys([*a, *b])}


def named_base(base: nn.Module | str, preprocess=None) -> tuple[nn.Module, object]:
    """``(base, preprocess)``: a registry name (``"resnet50"``) becomes Keras'
    ``ResNet50(include_top=False, weights="imagenet")`` with, unless ``preprocess`` is given, the
    ``preprocess_input`` mode its weights were trained with (``weights/registry.json``); a module is
    returned as it is."""
    if not isinstance(base, str):
        return base, preprocess
    module = architecture(base).build(include_top=False, weights="imagenet")
    return module, preprocess or functools.partial(preprocess_input, mode=preprocessing(base))


def default_unfreeze_from(base: nn.Module) -> str:
    """The first layer the lecture's fine-tuning opens for ``base``'s architecture (the registry's
    ``unfreeze_from``: ``block5_conv1`` for VGG16)."""
    arch = getattr(base, "arch", None)
    point = architecture(arch).unfreeze_from if arch else None
    if point is None:
        raise ValueError(f"fine_tune: pass unfreeze_from= (the first layer to train): {type(base).__name__} "
                         f"has no unfreeze point in the model registry")
    return point


def train_from_scratch(model: nn.Module, train, validation=None, *, epochs: int = 30, classes: int = 1,
                       optimizer="rmsprop", learning_rate: float = 1e-4, augment=None, preprocess=None,
                       variables=None, seed: int = 0, verbose: int = 0, callbacks=()) -> History:
    """Train every parameter of ``model`` (e.g. :func:`minicnn.models.small_convnet`) from its
    random initialisation (seeded by ``seed``), or from ``variables`` when given."""
    trainer = Trainer(model, _loss(classes), **_optimizer(optimizer, learning_rate), variables=variables)
    return trainer.fit(_prepared(train, augment, preprocess, seed), epochs=epochs, seed=seed, verbose=verbose,
                       callbacks=callbacks, validation_data=_prepared(validation, preprocess=preprocess))


def feature_extraction(base: nn.Module | str, train, validation=None, *, variables=None, head=None, classes: int = 1,
                       epochs: int = 30, optimizer="rmsprop", learning_rate: float = 2e-5, preprocess=None,
                       cache_dir=None, seed: int = 0, verbose: int = 0, callbacks=()) -> History:
    """Run the frozen ``base`` once over ``train`` and ``validation`` (:func:`extract_features`,
    cached in ``cache_dir``), then train ``head`` (default :func:`default_head`) on the features.

    ``history.trainer`` holds the head alone, taking features as input. ``optimizer``: a Keras
    name at ``learning_rate`` or an optax transform (with its own rate), in every recipe. ``base``:
    a module, or a registry name for its ImageNet no-top model and preprocessing (:func:`named_base`),
    in every recipe that takes a base.
    """
    base, preprocess = named_base(base, preprocess)
    base_vars = variables if variables is not None else init(
        base, jax.random.key(seed), _first_x(_prepared(train, preprocess=preprocess)))

    def features(data, shuffle):
        f, y = extract_features(base, base_vars, _prepared(data, preprocess=preprocess), cache_dir=cache_dir,
                                verbose=bool(verbose))
        return from_arrays(f, y, batch_size=getattr(data, "batch_size", 32), shuffle=shuffle, seed=seed)

    head = Sequential(default_head(classes) if head is None else head)
    trainer = Trainer(head, _loss(classes), **_optimizer(optimizer, learning_rate))
    return trainer.fit(features(train, True), epochs=epochs, seed=seed, verbose=verbose,
                       callbacks=callbacks,
                       validation_data=None if validation is None else features(validation, False))


def feature_extraction_with_augmentation(base: nn.Module | str, train, validation=None, *, variables=None, head=None,
                                         classes: int = 1, epochs: int = 30, optimizer="rmsprop",
                                         learning_rate: float = 2e-5, augment=None, preprocess=None,
                                         seed: int = 0, verbose: int = 0, callbacks=()) -> History:
    """Train ``Sequential([base, *head])`` end to end on (augmented) batches with the whole base
    frozen (``conv_base.trainable = False``): the base runs forward on every batch, gradients stop
    at the head."""
    base, preprocess = named_base(base, preprocess)
    model, full = pretrained_model(base, _first_x(_prepared(train, preprocess=preprocess)), variables, head,
                                   classes, seed)
    mask = trainable_mask(full, "all", layers=[model.layer_names()[0]])
    trainer = Trainer(model, _loss(classes), **_optimizer(optimizer, learning_rate), variables=full, trainable=mask)
    return trainer.fit(_prepared(train, augment, preprocess, seed), epochs=epochs, seed=seed, verbose=verbose,
                       callbacks=callbacks, validation_data=_prepared(validation, preprocess=preprocess))


def fine_tune(base: nn.Module | str, train, validation=None, *, unfreeze_from: str | None = None, variables=None, head=None,
              classes: int = 1, epochs: tuple[int, int] = (30, 100), optimizer="rmsprop",
              learning_rates: tuple[float, float] = (2e-5, 1e-5), augment=None, preprocess=None,
              train_batchnorm: bool = False, phase1: History | None = None, seed: int = 0, verbose: int = 0,
              callbacks=()) -> History:
    """The lecture's fine-tuning: phase 1 trains the head on top of the frozen base
    (:func:`feature_extraction_with_augmentation`, ``epochs[0]`` epochs at ``learning_rates[0]``),
    or continues from ``phase1``, the History of such a run (the lecture fine-tunes the model it
    has just trained that way; its compiled steps are reused);
    phase 2 unfreezes ``unfreeze_from`` (e.g. ``"block5_conv1"``) and every layer after it and
    trains ``epochs[1]`` more epochs at ``learning_rates[1]`` with a fresh optimizer state. The
    History covers both phases, epoch numbers running on. ``unfreeze_from`` defaults to the
    registry's point for the base's architecture (:func:`default_unfreeze_from`), so
    ``fine_tune("resnet50", train, val)`` is the whole recipe on ResNet50's ImageNet base.

    BatchNormalization layers stay frozen, in inference mode, in phase 2 too unless
    ``train_batchnorm`` (Keras' advice for fine-tuning EfficientNet: small batches would otherwise
    replace the pretrained statistics with noisy ones).
    """
    base, preprocess = named_base(base, preprocess)
    unfreeze_from = unfreeze_from or default_unfreeze_from(base)
    history = phase1 if phase1 is not None else feature_extraction_with_augmentation(
        base, train, validation, variables=variables, head=head, classes=classes, epochs=epochs[0],
        optimizer=optimizer, learning_rate=learning_rates[0], augment=augment, preprocess=preprocess,
        seed=seed, verbose=verbose, callbacks=callbacks)
    trainer = history.trainer
    start = trainer.epoch
    x = _first_x(_prepared(train, preprocess=preprocess))
    mask = trainable_mask(trainer.variables, from_layer=unfreeze_from, model=trainer.model,
                          input_shape=x.shape[1:])
    if not train_batchnorm:
        mask = jax.tree_util.tree_map(lambda m, bn: m and not bn, mask, _batchnorm_leaves(trainer.variables))
    phase2 = _optimizer(optimizer, learning_rates[1])
    trainer.set_trainable(mask, phase2["optimizer"], **phase2.get("optimizer_kwargs", {}))
    return trainer.fit(_prepared(train, augment, preprocess, seed + 1), epochs=start + epochs[1],
                       initial_epoch=start, seed=seed, verbose=verbose, callbacks=callbacks,
                       validation_data=_prepared(validation, preprocess=preprocess))


def _batchnorm_leaves(variables):
    """True for the params of layers that keep moving statistics (BatchNormalization)."""
    stats = variables.get("batch_stats", {})

    def is_bn(path, _):
        node = stats
        for key in path[:-1]:
            node = node.get(key.key, {}) if isinstance(node, dict) else {}
        return bool(node)

    return jax.tree_util.tree_map_with_path(is_bn, variables["params"])


def fine_tune_inception_v3(train, validation=None, *, classes: int, weights: str | None = "imagenet",
                           epochs: tuple[int, int] = (30, 30), freeze_below: int = 249, augment=None,
                           seed: int = 0, verbose: int = 0, callbacks=()) -> History:
    """The InceptionV3 lecture, as Keras' fine-tuning example runs it.

    ``InceptionV3(include_top=False, weights=weights)``, then GlobalAveragePooling2D,
    Dense(1024, relu), Dense(classes, softmax), on ``preprocess_input(x, "tf")``. Phase 1 trains
    the head on the frozen base with RMSprop (Keras' default rate, 1e-3); phase 2 freezes Keras'
    ``model.layers[:freeze_below]`` of that functional model (249: "the top 2 inception blocks",
    ``mixed9`` and ``mixed10``, train, their BatchNormalization included as in Keras) and trains
    with SGD(1e-4, momentum=0.9). ``epochs``: (phase 1, phase 2); labels are class indices.
    """
    base = InceptionV3(include_top=False, weights=weights)
    head = [GlobalAveragePooling2D(), Dense(1024, activation="relu"), Dense(classes, activation="softmax")]
    preprocess = lambda x: preprocess_input(x, "tf")  # noqa: E731
    x = _first_x(_prepared(train, preprocess=preprocess))
    # the lecture's Model(base.input, predictions) lists the base's layers first, InputLayer at 0
    names = keras_layers(base, None, x.shape[1:])
    if not 1 <= freeze_below < len(names):
        raise ValueError(f"freeze_below={freeze_below} must index a layer of the base, 1..{len(names) - 1}")
    unfreeze_from = names[freeze_below]
    phase1 = feature_extraction_with_augmentation(
        base, train, validation, head=head, classes=classes, epochs=epochs[0], optimizer="rmsprop",
        learning_rate=1e-3, augment=augment, preprocess=preprocess, seed=seed, verbose=verbose, callbacks=callbacks)
    return fine_tune(base, train, validation, unfreeze_from=unfreeze_from, classes=classes, epochs=(0, epochs[1]),
                     optimizer=optimizers.sgd(1e-4, momentum=0.9), augment=augment, preprocess=preprocess,
                     train_batchnorm=True, phase1=phase1, seed=seed, verbose=verbose, callbacks=callbacks)
