"""minicnn: the chapter-5 workflow from the command line.

Every command prints one clear line and exits non-zero on bad input (missing file,
unreadable image, unknown layer, weights not available offline).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RECIPES = ("scratch", "features", "features-aug", "fine-tune")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (a :class:`CLIError`), like every other error of the command."""

    def error(self, message):
        raise CLIError(f"{message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 epochs, 0 images per row, top 0 are mistakes, not requests)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def fraction(text: str) -> float:
    """argparse type: a float strictly between 0 and 1 (the validation split)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def _user_errors() -> tuple[type[BaseException], ...]:
    """What bad input raises in the library: printed as one line, never as a traceback. Imported only
    when an error is being handled (importing minicnn.programs.cli stays cheap)."""
    import pickle

    from PIL import Image
    # OSError covers missing files, WeightsUnavailableError and PIL's UnidentifiedImageError; ValueError
    # the readers' refusals (BadImageError, shape mismatches); UnpicklingError the refused .pth globals.
    return (CLIError, OSError, ValueError, KeyError, pickle.UnpicklingError, Image.DecompressionBombError)


def _pretrained_names() -> tuple[str, ...]:
    from minicnn.models.registry import pretrained_names  # the registry owns the model list
    return pretrained_names()


def _model_names() -> tuple[str, ...]:
    from minicnn.models.registry import ARCHITECTURES
    return tuple(ARCHITECTURES)


TRAINED_SPEC = "model.json"  # written by `minicnn train` next to its weights (model/): how to rebuild the model


class Loaded:
    """A model ready for a command: ``model``, ``variables``, ``preprocess`` (uint8-range images -> model input),
    ``size`` (the input side; None when any size works), ``class_names`` (None: class indices, or ImageNet's),
    ``resize`` (how ``decode_image`` resizes: as the model's training data was, ``"pillow"`` for ImageNet models
    as Keras' ``load_img``), ``channels`` (3, or 1: images are decoded to grayscale)."""

    def __init__(self, model, variables, preprocess, size, class_names=None, resize="pillow", interpolation="nearest",
                 channels=3):
        self.model, self.variables, self.preprocess, self.size = model, variables, preprocess, size
        self.class_names, self.resize, self.interpolation, self.channels = class_names, resize, interpolation, channels


def _model_help() -> str:
    return f"one of {', '.join(_model_names())}, or a folder written by `minicnn train`"


def _model(name: str, weights: str | None, include_top: bool = True) -> Loaded:
    """The model ``name`` names: a registry architecture (``weights``: "imagenet", a weight file or checkpoint,
    or "none" for random weights) or a ``minicnn train`` output folder (its own weights; ``weights`` must be
    None). ``weights=None`` for an architecture: ImageNet's if it has them, else refused (never random silently).
    """
    from minicnn.models.registry import ARCHITECTURES
    if name not in ARCHITECTURES:
        if Path(name, TRAINED_SPEC).is_file():
            if weights is not None:
                raise CLIError(f"--weights {weights} cannot apply to {name}: a `minicnn train` folder brings its own "
                               "weights (drop --weights)")
            return _trained(Path(name))
        hint = (f"{name} is a folder without {TRAINED_SPEC}: not written by `minicnn train`" if Path(name).is_dir()
                else f"unknown model {name!r}")
        raise CLIError(f"{hint}; --model takes {_model_help()}")
    return _architecture(name, weights, include_top)


def _architecture(name: str, weights: str | None, include_top: bool) -> Loaded:
    import jax
    import jax.numpy as jnp

    from minicnn import ops
    from minicnn.models import architecture, mnist_convnet, small_convnet
    from minicnn.weights import pretrained
    arch = architecture(name)
    if weights is None:
        if not arch.pretrained:
            raise CLIError(f"{name} has no pretrained weights: pass --weights none (random), --weights CHECKPOINT, "
                           "or --model FOLDER written by `minicnn train`")
        weights = "imagenet"
    if arch.pretrained and weights != "none":
        p = pretrained(name, include_top, weights)
        return Loaded(p.model, p.variables, p.preprocess, arch.input_size)
    if arch.pretrained:
        model, shape = arch.build(include_top=include_top), (arch.input_size, arch.input_size, 3)
    else:  # the chapter's own convnets: their dense heads fix the input size
        model = mnist_convnet(include_top=include_top) if arch.build is mnist_convnet else small_convnet()
        shape = model.input_shape
    x = jnp.zeros((1, *shape))
    if weights == "none":
        variables = ops.jit(model.init, run_once=True)(jax.random.key(0), x)  # compiled once, run once
    else:
        variables = _checkpoint(weights, model, x, name)
    return Loaded(model, variables, lambda x: x, shape[0], channels=shape[-1])


def _checkpoint(path: str, model, x, what: str) -> dict:
    """The variables of the minicnn checkpoint ``path`` for ``model``; one error when they do not fit it."""
    import jax

    from minicnn.weights import load
    if not Path(path).exists():
        raise CLIError(f"no such weights: {path} (give \"none\", \"imagenet\" for an ImageNet model, or a checkpoint)")
    variables = load(path)
    expected = jax.eval_shape(model.init, jax.random.key(0), x)
    shapes = lambda tree: jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)
    if {k: shapes(variables.get(k)) for k in expected} != shapes(dict(expected)):
        raise CLIError(f"the weights in {path} do not fit {what} (different layers or shapes): give the checkpoint "
                       f"this architecture was trained into, or --model FOLDER written by `minicnn train`")
    return {k: variables[k] for k in expected}


def _spec_model(spec: dict):
    """``(model, preprocess)`` rebuilt from a ``model.json`` (see :func:`_write_spec`)."""
    from minicnn import models, weights
    from minicnn.layers import Sequential
    from minicnn.transfer.recipes import default_head
    shape = tuple(spec["input_shape"])
    if spec["architecture"] == "small_convnet":
        return models.small_convnet(shape, dropout=spec["dropout"], classes=spec["classes"]), lambda x: x / 255.0
    base = models.architecture(spec["architecture"]).build(include_top=False, input_shape=shape)
    mode = spec["preprocessing"]
    return Sequential([base, *default_head(spec["classes"])]), lambda x: weights.preprocess_input(x, mode)


def _trained(folder: Path) -> Loaded:
    """The model ``minicnn train`` wrote into ``folder``: ``model.json`` (architecture) + ``model/`` (weights)."""
    import jax.numpy as jnp
    try:
        spec = json.loads((folder / TRAINED_SPEC).read_text())
        model, preprocess = _spec_model(spec)
        shape = tuple(spec["input_shape"])
    except (ValueError, KeyError, TypeError) as e:
        raise CLIError(f"{folder / TRAINED_SPEC} is damaged or from another version ({e}): train again") from None
    variables = _checkpoint(str(folder / "model"), model, jnp.zeros((1, *shape)), str(folder))
    return Loaded(model, variables, preprocess, shape[0], spec["class_names"], "tensor", "bilinear")


def _weights_arg(value: str | None) -> str | None:
    return "none" if value is not None and value.lower() in ("none", "random") else value


def _image(path, loaded: Loaded | None):
    """(H, W, C) float32 of ``path``, decoded and resized for ``loaded`` as its training data was (None: RGB at
    the file's own size)."""
    from minicnn.data import decode_image
    if not Path(path).is_file():
        raise CLIError(f"no such image file: {path}")
    size = None if loaded is None or loaded.size is None else (loaded.size, loaded.size)
    interpolation, resize = ("nearest", "pillow") if loaded is None else (loaded.interpolation, loaded.resize)
    color_mode = "grayscale" if loaded is not None and loaded.channels == 1 else "rgb"
    return decode_image(path, size, color_mode, interpolation, resize=resize).astype("float32")


def _expand_images(items) -> list[str]:
    """Image files named by ``items``: files as given, folders searched recursively (hidden names and non-image
    files skipped), glob patterns (``**`` recursive) expanded; one error naming an item that yields nothing."""
    import glob
    import os

    from minicnn.data import IMAGE_EXTENSIONS
    found = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(str(Path(root, f)) for root, dirs, names in os.walk(path)
                           for f in names if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
                           and not any(part.startswith(".") for part in Path(root).relative_to(path).parts))
            if not files:
                raise CLIError(f"no images in folder {item} (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)")
        elif path.exists() or not glob.has_magic(item):
            files = [item]  # a missing file is named by _image
        else:
            files = sorted(f for f in glob.glob(item, recursive=True) if Path(f).is_file())
            if not files:
                raise CLIError(f"no files match {item!r}: check the pattern (quote it, so the shell leaves it to "
                               "minicnn)")
        found += files
    return found


def _class_names(loaded: Loaded, classes: int) -> list[str]:
    """Names of the model's classes: a trained model's folders, ImageNet's for 1000 classes, else indices."""
    if loaded.class_names is not None:
        return list(loaded.class_names)
    if classes == 1000:
        from minicnn.weights.imagenet import class_index
        return [name for _, (_, name) in sorted(class_index().items(), key=lambda kv: int(kv[0]))]
    return [str(i) for i in range(max(classes, 2))]


def _probabilities(p):
    """(N, K) class probabilities; a single sigmoid unit is two classes ``[1 - p, p]``."""
    import numpy as np
    p = np.asarray(p, np.float64)
    return np.concatenate([1 - p, p], axis=1) if p.shape[1] == 1 else p


PREDICT_BATCH = 16  # images decoded and run at a time: a folder of thousands never sits in memory at once


def cmd_predict(args) -> int:
    import numpy as np
    paths = _expand_images(args.images)
    loaded = _model(args.model, _weights_arg(args.weights))
    names = None
    for start in range(0, len(paths), PREDICT_BATCH):
        chunk = paths[start:start + PREDICT_BATCH]
        x = np.stack([_image(p, loaded) for p in chunk])
        probs = _probabilities(loaded.model.apply(loaded.variables, loaded.preprocess(x)))
        names = names or _class_names(loaded, probs.shape[1] if probs.shape[1] > 2 else 1)
        for path, row in zip(chunk, probs):
            print(path)
            for rank, k in enumerate(np.argsort(-row, kind="stable")[:args.top], 1):
                print(f"  {rank}. {names[k]:<24} {row[k]:.4f}")
    return 0


def _class_index(value: str | None, loaded: Loaded, classes: int):
    if value is None:
        return None
    names = _class_names(loaded, classes)
    if value.isdigit() and int(value) < len(names):
        return int(value)
    for i, name in enumerate(names):
        if name.lower() == value.lower():
            return i
    examples = ", ".join(names[:3])
    raise CLIError(f"unknown class {value!r} for this model: give an index 0-{len(names) - 1} or a name "
                   f"({examples}, ...)")


def cmd_gradcam(args) -> int:
    import numpy as np

    from minicnn import viz
    loaded = _model(args.model, _weights_arg(args.weights))
    original = _image(args.image, None)  # in colour, at its own size, for the overlay
    x = loaded.preprocess(_image(args.image, loaded)[None])
    classes = int(np.shape(loaded.model.apply(loaded.variables, x))[-1])
    cls = _class_index(args.class_, loaded, classes)
    heatmap = viz.grad_cam(loaded.model, loaded.variables, x, class_index=cls, layer=args.layer)
    out = _out_path(args.out, Path(args.image).stem + "_gradcam.png")
    viz.overlay(original.astype(np.uint8), np.asarray(heatmap[0])).save(out)
    print(out)
    return 0


def _out_path(out: str | None, default: str) -> Path:
    path = Path(out or default)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def cmd_filters(args) -> int:
    import jax

    from minicnn import viz
    # The conv base suffices and takes any size; the small convnets' dense heads fix their input size.
    loaded = _model(args.model, _weights_arg(args.weights), include_top=False)
    fixed = args.model not in _pretrained_names()
    if fixed and args.size not in (None, loaded.size):
        raise CLIError(f"{args.model} takes only {loaded.size}x{loaded.size} images (its Dense head fixes the size): "
                       f"drop --size or give --size {loaded.size}")
    size = args.size or (loaded.size if fixed else 128)
    patterns = viz.filter_patterns(loaded.model, loaded.variables, args.layer, filters=list(range(args.filters)),
                                   size=size, steps=args.steps, preset=args.preset,
                                   key=jax.random.key(args.seed), preprocess=loaded.preprocess)
    out = _out_path(args.out, f"{Path(args.model).name}_{args.layer.replace('/', '_')}_filters.png")
    viz.plot_filter_grid(patterns).save(out)
    print(out)
    return 0


def cmd_activations(args) -> int:
    from minicnn import viz
    loaded = _model(args.model, _weights_arg(args.weights))
    x = loaded.preprocess(_image(args.image, loaded)[None])
    acts = viz.activations(loaded.model, loaded.variables, x, layers=[args.layer])
    out = _out_path(args.out, f"{Path(args.image).stem}_{args.layer.replace('/', '_')}_activations.png")
    viz.plot_activations(acts, args.layer, images_per_row=args.images_per_row).save(out)
    print(out)
    return 0


def cmd_summary(args) -> int:
    from minicnn.summary import summary
    weights = "none" if args.model in _model_names() else None  # the architecture only; a train folder's own
    loaded = _model(args.model, weights, include_top=not args.no_top)
    shape = tuple(args.input_shape) if args.input_shape else (
        getattr(loaded.model, "input_shape", None) or (loaded.size, loaded.size, 3))
    summary(loaded.model, shape, variables=None if args.input_shape else loaded.variables)
    return 0


SPLITS = ("train", "validation", "test")


def _split_folders(data_dir: Path, validation_split: float | None) -> dict[str, Path] | None:
    """The lecture's ``train/ validation/ (test/)`` layout of ``data_dir``, or None for class folders. A layout
    needs ``train/`` and ``validation/``; any other mix of split names is refused (it would train the split
    folders as classes)."""
    present = [name for name in SPLITS if (data_dir / name).is_dir()]
    if not present:
        return None
    if present[:2] != ["train", "validation"]:
        raise CLIError(f"{data_dir} has {'/, '.join(present)}/ but not both train/ and validation/: give the "
                       "lecture's layout (train/, validation/, optional test/, each with one folder per class) or "
                       "one folder per class")
    if validation_split is not None:
        raise CLIError(f"{data_dir} is split already (train/, validation/): drop --validation-split")
    return {name: data_dir / name for name in present}


def _datasets(data_dir: Path, args):
    """``(train, validation, test or None, classes)`` from a split layout or class folders (then split by
    ``--validation-split``, default 0.2)."""
    from minicnn.data import image_dataset_from_directory, list_image_files
    splits = _split_folders(data_dir, args.validation_split)
    class_names = list_image_files(splits["train"] if splits else data_dir)[2]
    classes = 1 if len(class_names) == 2 else len(class_names)  # two classes: one sigmoid unit, as in the lecture
    common = dict(target_size=(args.image_size, args.image_size), batch_size=args.batch_size, seed=args.seed,
                  class_mode="binary" if classes == 1 else "sparse")
    if splits is None:
        split = dict(directory=data_dir, validation_split=args.validation_split or 0.2, **common)
        return (image_dataset_from_directory(subset="training", **split),
                image_dataset_from_directory(subset="validation", **split), None, classes)
    loaded = {name: image_dataset_from_directory(path, shuffle=name == "train", **common)
              for name, path in splits.items()}
    for name, ds in loaded.items():
        if ds.class_names != loaded["train"].class_names:
            raise CLIError(f"{splits[name]} has classes {ds.class_names} but train/ has {loaded['train'].class_names}: "
                           "give every split the same class folders")
    return loaded["train"], loaded["validation"], loaded.get("test"), classes


def _write_spec(out: Path, **spec) -> None:
    """``out/model.json``: what :func:`_spec_model` needs to rebuild the trained model without code."""
    (out / TRAINED_SPEC).write_text(json.dumps({"written_by": "minicnn train", **spec}, indent=1))


def cmd_train(args) -> int:
    import jax

    from minicnn import models, weights
    from minicnn.augment import ImageAugmenter
    from minicnn.train import CSVLogger
    from minicnn.transfer import recipes
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise CLIError(f"no such data directory: {args.data_dir}")
    out = Path(args.out)
    train, val, test, classes = _datasets(data_dir, args)
    out.mkdir(parents=True, exist_ok=True)
    shape = (args.image_size, args.image_size, 3)
    augmenter = ImageAugmenter(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                               shear_range=20, zoom_range=0.2, horizontal_flip=True)
    (out / "log.csv").unlink(missing_ok=True)  # appended to, so both fine-tuning phases are logged
    common = dict(classes=classes, seed=args.seed, verbose=1, callbacks=[CSVLogger(out / "log.csv", append=True)])
    spec = dict(recipe=args.recipe, input_shape=shape, classes=classes, class_names=train.class_names)
    if args.recipe == "scratch":
        model = models.small_convnet(shape, dropout=0.5, classes=classes)
        preprocess = lambda x: x / 255.0
        history = recipes.train_from_scratch(model, train, val, epochs=args.epochs, augment=augmenter,
                                             preprocess=preprocess, **common)
        spec.update(architecture="small_convnet", dropout=0.5, preprocessing="rescale")
        model, variables = history.trainer.model, history.trainer.variables
    else:
        arch = models.architecture(args.model)
        mode = weights.preprocessing(args.model)
        base = arch.build(include_top=False, weights="imagenet", input_shape=shape)
        preprocess = lambda x: weights.preprocess_input(x, mode)
        spec.update(architecture=args.model, preprocessing=mode)
        if args.recipe == "features":
            history = recipes.feature_extraction(base, train, val, epochs=args.epochs, preprocess=preprocess,
                                                 cache_dir=out / "features_cache", **common)
        elif args.recipe == "features-aug":
            history = recipes.feature_extraction_with_augmentation(base, train, val, epochs=args.epochs,
                                                                   augment=augmenter, preprocess=preprocess, **common)
        else:
            history = recipes.fine_tune(base, train, val, unfreeze_from=arch.unfreeze_from, preprocess=preprocess,
                                        epochs=(args.epochs, args.epochs), augment=augmenter, **common)
        model, variables = _spec_model(spec)[0], history.trainer.variables
        if args.recipe == "features":  # the trainer holds the head alone: graft it onto the pretrained base
            x = jax.numpy.zeros((1, *shape))
            variables = _with_head(recipes.pretrained_model(base, x, classes=classes)[1], variables)
    weights.save(jax.device_get(variables), out / "model")
    _write_spec(out, **spec)
    history.save(out / "history.json")
    history.plot(out / "curves.png")
    last = {k: v[-1] for k, v in history.history.items() if v}
    if test is not None:
        from minicnn.train import Trainer
        evaluator = Trainer(model, "binary_crossentropy" if classes == 1 else "sparse_categorical_crossentropy",
                            "rmsprop", metrics=["accuracy"], variables=variables)
        last.update({f"test_{k}": v for k, v in evaluator.evaluate(test.map(preprocess), return_dict=True).items()})
    print(json.dumps({"recipe": args.recipe, "classes": train.class_names, "out": str(out), **last}, default=float))
    return 0


def _with_head(full: dict, head: dict) -> dict:
    """``full`` (``Sequential([base, *head])``'s variables) with every head layer's variables replaced by the trained
    ``head``'s (same layer names: both are :func:`default_head`)."""
    return {kind: {**tree, **head.get(kind, {})} for kind, tree in full.items()}


def cmd_weights(args) -> int:
    from minicnn import weights
    if args.action == "list":
        rows = weights.list_weights()
        print(f"{'name':<30}{'arch':<20}{'top':<5}{'format':<10}{'prep':<7}{'cached':<7}{'ported':<7}source")
        for r in rows:
            print(f"{r['name']:<30}{r['arch']:<20}{'yes' if r['include_top'] else 'no':<5}{r['format']:<10}"
                  f"{r['preprocessing']:<7}{'yes' if r['cached'] else 'no':<7}{'yes' if r['ported'] else 'no':<7}"
                  f"{r['source']}")
        return 0
    if not args.target:
        raise CLIError(f"weights {args.action} needs a {'NAME' if args.action == 'fetch' else 'FILE'}")
    if args.action == "fetch":
        print(weights.fetch(args.target))
        return 0
    if not Path(args.target).exists():
        raise CLIError(f"no such weight file: {args.target}")
    print(weights.port(args.target, arch=args.arch, out=args.out))
    return 0


def cmd_demo(args) -> int:
    from minicnn.programs.demo import run_demo
    run_demo(args.out, model=args.model, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="minicnn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, fn, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        return p

    model_help = f"{_model_help()} (default efficientnet_lite0)"
    weights_help = ('"imagenet" (the default for an ImageNet model), a weight file or minicnn checkpoint, or "none" '
                    "for random weights; not with a `minicnn train` folder, which brings its own")

    def model_args(p):
        p.add_argument("--model", default="efficientnet_lite0", help=model_help)
        p.add_argument("--weights", help=weights_help)

    p = add("demo", cmd_demo, "the main job: the chapter-5 story on real images that ship with the dependencies")
    p.add_argument("--out", default="minicnn_demo", help="output folder (PNGs and report.html)")
    p.add_argument("--model", default="efficientnet_lite0", choices=("efficientnet_lite0", "vgg16"))
    p.add_argument("--quick", action="store_true", help="a smaller run (under 2 minutes)")

    p = add("predict", cmd_predict, "top-k classes for image files, folders (searched recursively) and globs")
    p.add_argument("images", nargs="+", metavar="IMAGE|FOLDER|GLOB")
    model_args(p)
    p.add_argument("--top", type=positive_int, default=5)

    p = add("gradcam", cmd_gradcam, "Grad-CAM heatmap over an image")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--class", dest="class_", help="class index or name (default: the top prediction)")
    p.add_argument("--layer", help="feature layer (default: the last conv layer)")
    p.add_argument("--out")
    model_args(p)

    p = add("filters", cmd_filters, "filter patterns of a layer by gradient ascent")
    p.add_argument("model", metavar="MODEL", help=_model_help())
    p.add_argument("layer", metavar="LAYER")
    p.add_argument("--out")
    p.add_argument("--weights", help=weights_help)
    p.add_argument("--filters", type=positive_int, default=16, help="the first N filters")
    p.add_argument("--steps", type=positive_int, default=40)
    p.add_argument("--size", type=positive_int,
                   help="image size (default 128; a model with a dense head: its input size)")
    p.add_argument("--preset", default="book", choices=("book", "lucid"))
    p.add_argument("--seed", type=int, default=0)

    p = add("activations", cmd_activations, "every channel of a layer's activation for an image")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("layer", metavar="LAYER")
    p.add_argument("--out")
    p.add_argument("--images-per-row", type=positive_int, default=16)
    model_args(p)

    p = add("summary", cmd_summary, "Keras-style summary of a model")
    p.add_argument("model", metavar="MODEL", help=_model_help())
    p.add_argument("--input-shape", type=positive_int, nargs=3, metavar=("H", "W", "C"))
    p.add_argument("--no-top", action="store_true", help="the conv base only (include_top=False)")

    p = add("train", cmd_train, "train with a chapter-5 recipe on one folder per class, or on the lecture's "
                                "train/ validation/ (test/) layout; writes model/ and model.json for the other "
                                "commands")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--recipe", required=True, choices=RECIPES)
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--out", default="minicnn_train")
    p.add_argument("--model", default="efficientnet_lite0", choices=_pretrained_names(),
                   help="the pretrained base of the transfer recipes")
    p.add_argument("--image-size", type=positive_int, default=150)
    p.add_argument("--batch-size", type=positive_int, default=20)
    p.add_argument("--validation-split", type=fraction,
                   help="held out of class folders (default 0.2); not with a train/ validation/ layout")
    p.add_argument("--seed", type=int, default=0)

    p = add("weights", cmd_weights, "list, fetch or port pretrained weight sets")
    p.add_argument("action", choices=("list", "fetch", "port"))
    p.add_argument("target", nargs="?", metavar="NAME|FILE")
    p.add_argument("--arch", help="architecture of FILE when it cannot be detected")
    p.add_argument("--out", help="where to write the ported checkpoint")
    return parser


def main(argv=None) -> int:
    """Run one command; bad input of any kind prints one line to stderr and returns 2."""
    try:
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except _user_errors() as e:  # bad arguments and images, refused files, unknown layers, weights offline
        message = (str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)) or type(e).__name__
    message = message.split("\n-----")[0]  # drop JAX's traceback-filtering note
    print(f"minicnn: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
