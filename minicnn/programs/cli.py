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


def _model(name: str, weights: str | None, include_top: bool = True):
    """(model, variables, preprocess, input size) for a named model; random weights when weights is None."""
    import jax
    import jax.numpy as jnp

    from minicnn.models import architecture, mnist_convnet, small_convnet
    from minicnn.weights import pretrained
    arch = architecture(name)
    if arch.pretrained and weights is not None:
        p = pretrained(name, include_top, weights)
        return p.model, p.variables, p.preprocess, arch.input_size
    if arch.pretrained:
        model, shape = arch.build(include_top=include_top), (arch.input_size, arch.input_size, 3)
    else:  # the chapter's own convnets: their dense heads fix the input size
        model = mnist_convnet(include_top=include_top) if arch.build is mnist_convnet else small_convnet()
        shape = model.input_shape
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *shape)))
    return model, variables, (lambda x: x), shape[0]


def _weights_arg(value: str) -> str | None:
    return None if value.lower() in ("none", "random") else value


def _image(path: str, size: int | None):
    from minicnn.data import load_image
    if not Path(path).is_file():
        raise CLIError(f"no such image file: {path}")
    return load_image(path, None if size is None else (size, size))


def _out_path(out: str | None, default: str) -> Path:
    path = Path(out or default)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def cmd_predict(args) -> int:
    import numpy as np

    from minicnn.weights import decode_predictions
    model, variables, preprocess, size = _model(args.model, _weights_arg(args.weights))
    x = np.stack([_image(p, size) for p in args.images])
    probs = np.asarray(model.apply(variables, preprocess(x)))
    for path, decoded in zip(args.images, decode_predictions(probs, top=args.top)):
        print(path)
        for rank, (wnid, name, score) in enumerate(decoded, 1):
            print(f"  {rank}. {name:<24} {wnid}  {score:.4f}")
    return 0


def _class_index(value: str | None):
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    from minicnn.weights.imagenet import class_index
    for i, (_, name) in class_index().items():
        if name.lower() == value.lower():
            return int(i)
    raise CLIError(f"unknown ImageNet class {value!r}: give an index 0-999 or a name such as 'tabby'")


def cmd_gradcam(args) -> int:
    import numpy as np

    from minicnn import viz
    model, variables, preprocess, size = _model(args.model, _weights_arg(args.weights))
    original = _image(args.image, None)
    x = preprocess(_image(args.image, size)[None])
    cls = _class_index(args.class_)
    heatmap = viz.grad_cam(model, variables, x, class_index=cls, layer=args.layer)
    out = _out_path(args.out, Path(args.image).stem + "_gradcam.png")
    viz.overlay(original.astype(np.uint8), np.asarray(heatmap[0])).save(out)
    print(out)
    return 0


def cmd_filters(args) -> int:
    import jax

    from minicnn import viz
    # The conv base suffices and takes any size; the small convnets' dense heads fix their input size.
    model, variables, preprocess, size = _model(args.model, _weights_arg(args.weights), include_top=False)
    size = args.size or (128 if args.model in _pretrained_names() else size)
    patterns = viz.filter_patterns(model, variables, args.layer, filters=list(range(args.filters)),
                                   size=size, steps=args.steps, preset=args.preset,
                                   key=jax.random.key(args.seed), preprocess=preprocess)
    out = _out_path(args.out, f"{args.model}_{args.layer.replace('/', '_')}_filters.png")
    viz.plot_filter_grid(patterns).save(out)
    print(out)
    return 0


def cmd_activations(args) -> int:
    from minicnn import viz
    model, variables, preprocess, size = _model(args.model, _weights_arg(args.weights))
    x = preprocess(_image(args.image, size)[None])
    acts = viz.activations(model, variables, x, layers=[args.layer])
    out = _out_path(args.out, f"{Path(args.image).stem}_{args.layer.replace('/', '_')}_activations.png")
    viz.plot_activations(acts, args.layer, images_per_row=args.images_per_row).save(out)
    print(out)
    return 0


def cmd_summary(args) -> int:
    from minicnn.summary import summary
    model, variables, _, size = _model(args.model, None, include_top=not args.no_top)
    shape = tuple(args.input_shape) if args.input_shape else (
        getattr(model, "input_shape", None) or (size, size, 3))
    if args.input_shape:
        variables = None  # rebuilt abstractly at the requested size
    summary(model, shape, variables=variables)
    return 0


def cmd_train(args) -> int:
    import jax

    from minicnn import models, weights
    from minicnn.augment import ImageAugmenter
    from minicnn.data import image_dataset_from_directory, list_image_files
    from minicnn.train import CSVLogger
    from minicnn.transfer import recipes
    if not Path(args.data_dir).is_dir():
        raise CLIError(f"no such data directory: {args.data_dir}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = (args.image_size, args.image_size)
    n_classes = len(list_image_files(args.data_dir)[2])
    classes = 1 if n_classes == 2 else n_classes  # two classes: one sigmoid unit, as in the lecture
    split = dict(directory=args.data_dir, target_size=size, batch_size=args.batch_size, seed=args.seed,
                 validation_split=args.validation_split, class_mode="binary" if classes == 1 else "sparse")
    train = image_dataset_from_directory(subset="training", **split)
    val = image_dataset_from_directory(subset="validation", **split)
    augmenter = ImageAugmenter(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                               shear_range=20, zoom_range=0.2, horizontal_flip=True)
    (out / "log.csv").unlink(missing_ok=True)  # appended to, so both fine-tuning phases are logged
    common = dict(classes=classes, seed=args.seed, verbose=1, callbacks=[CSVLogger(out / "log.csv", append=True)])
    if args.recipe == "scratch":
        model = models.small_convnet((*size, 3), dropout=0.5, classes=classes)
        history = recipes.train_from_scratch(model, train, val, epochs=args.epochs, augment=augmenter,
                                             preprocess=lambda x: x / 255.0, **common)
    else:
        arch = models.architecture(args.model)
        mode = weights.preprocessing(args.model)
        base = arch.build(include_top=False, weights="imagenet", input_shape=(*size, 3))
        prep = dict(preprocess=lambda x: weights.preprocess_input(x, mode))
        if args.recipe == "features":
            history = recipes.feature_extraction(base, train, val, epochs=args.epochs,
                                                 cache_dir=out / "features_cache", **prep, **common)
        elif args.recipe == "features-aug":
            history = recipes.feature_extraction_with_augmentation(base, train, val, epochs=args.epochs,
                                                                   augment=augmenter, **prep, **common)
        else:
            history = recipes.fine_tune(base, train, val, unfreeze_from=arch.unfreeze_from,
                                        epochs=(args.epochs, args.epochs), augment=augmenter, **prep, **common)
    weights.save(jax.device_get(history.trainer.variables), out / "model")
    history.save(out / "history.json")
    history.plot(out / "curves.png")
    last = {k: v[-1] for k, v in history.history.items() if v}
    print(json.dumps({"recipe": args.recipe, "classes": train.class_names, "out": str(out), **last}, default=float))
    return 0


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

    pretrained_models, models = _pretrained_names(), _model_names()

    def model_args(p, default="efficientnet_lite0", choices=pretrained_models):
        p.add_argument("--model", default=default, choices=choices)
        p.add_argument("--weights", default="imagenet",
                       help='"imagenet" (default), a weight file, or "none" for random weights')

    p = add("demo", cmd_demo, "the main job: the chapter-5 story on real images that ship with the dependencies")
    p.add_argument("--out", default="minicnn_demo", help="output folder (PNGs and report.html)")
    p.add_argument("--model", default="efficientnet_lite0", choices=("efficientnet_lite0", "vgg16"))
    p.add_argument("--quick", action="store_true", help="a smaller run (under 2 minutes)")

    p = add("predict", cmd_predict, "ImageNet top-k for image files")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    model_args(p)
    p.add_argument("--top", type=positive_int, default=5)

    p = add("gradcam", cmd_gradcam, "Grad-CAM heatmap over an image")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--class", dest="class_", help="ImageNet class index or name (default: the top prediction)")
    p.add_argument("--layer", help="feature layer (default: the last conv layer)")
    p.add_argument("--out")
    model_args(p)

    p = add("filters", cmd_filters, "filter patterns of a layer by gradient ascent")
    p.add_argument("model", choices=models, metavar="MODEL")
    p.add_argument("layer", metavar="LAYER")
    p.add_argument("--out")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--filters", type=positive_int, default=16, help="the first N filters")
    p.add_argument("--steps", type=positive_int, default=40)
    p.add_argument("--size", type=positive_int, help="image size (default 128; the input size of a small convnet)")
    p.add_argument("--preset", default="book", choices=("book", "lucid"))
    p.add_argument("--seed", type=int, default=0)

    p = add("activations", cmd_activations, "every channel of a layer's activation for an image")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("layer", metavar="LAYER")
    p.add_argument("--out")
    p.add_argument("--images-per-row", type=positive_int, default=16)
    model_args(p)

    p = add("summary", cmd_summary, "Keras-style summary of a model")
    p.add_argument("model", choices=models, metavar="MODEL")
    p.add_argument("--input-shape", type=positive_int, nargs=3, metavar=("H", "W", "C"))
    p.add_argument("--no-top", action="store_true", help="the conv base only (include_top=False)")

    p = add("train", cmd_train, "train on a folder of class sub-folders with a chapter-5 recipe")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--recipe", required=True, choices=RECIPES)
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--out", default="minicnn_train")
    p.add_argument("--model", default="efficientnet_lite0", choices=("efficientnet_lite0", "vgg16"))
    p.add_argument("--image-size", type=positive_int, default=150)
    p.add_argument("--batch-size", type=positive_int, default=20)
    p.add_argument("--validation-split", type=fraction, default=0.2)
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
