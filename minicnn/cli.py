"""The ``minicnn`` command line."""

from __future__ import annotations

import argparse
import sys

MODELS = ("vgg16", "vgg19", "small_convnet", "mnist_convnet")


def build_model(name: str, include_top: bool = True):
    from minicnn import models
    if name in ("vgg16", "vgg19"):
        return getattr(models, name.upper())(include_top=include_top)
    if name == "small_convnet":
        return models.small_convnet()
    if name == "mnist_convnet":
        return models.mnist_convnet(include_top=include_top)
    raise SystemExit(f"minicnn: unknown model {name!r}; choose from {', '.join(MODELS)}")


def cmd_summary(args) -> int:
    import minicnn
    model = build_model(args.model, include_top=not args.no_top)
    shape = tuple(args.input_shape) if args.input_shape else (
        getattr(model, "input_shape", None) or ((224, 224, 3) if not args.no_top else (150, 150, 3)))
    minicnn.summary(model, shape)
    return 0


def cmd_demo(args) -> int:
    import minicnn
    from minicnn.models import VGG16
    minicnn.summary(VGG16(include_top=False), (150, 150, 3))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="minicnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="print a Keras-style summary of a model")
    p.add_argument("model", choices=MODELS)
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("H", "W", "C"))
    p.add_argument("--no-top", action="store_true", help="the conv base only (include_top=False)")
    p.set_defaults(fn=cmd_summary)
    p = sub.add_parser("demo", help="the main job: the chapter-5 story on packaged real images")
    p.set_defaults(fn=cmd_demo)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"minicnn: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
