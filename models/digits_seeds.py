"""Further trained instances of the digits models, with another training seed.

    python -m models.digits_seeds                   # seed 1: resnet and mobilenet
    python -m models.digits_seeds --seed 2 --model resnet

Same architecture, hyper-parameters, data split, single thread and deterministic kernels as
``models.default_model`` (its ``build_and_export`` with another seed); only the seed given
to ``train`` (weight initialisation and batch order) differs. Writes

    models/digits_<name>_s<seed>.onnx          BN unfused
    models/digits_<name>_s<seed>_folded.onnx   BN folded
    models/digits_<name>_s<seed>.json          test accuracy of both files and of torch

Seed 0 is ``python -m models.default_model`` itself (files without the ``_s`` suffix).
Used by benchmarks/accuracy_recovery.py, to see whether a conclusion holds on a second
trained instance of each architecture.
"""

import argparse

from .default_model import MODELS, build_and_export

__all__ = ["main"]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m models.digits_seeds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1, help="training seed, >= 1 (default 1)")
    parser.add_argument("--model", choices=sorted(MODELS), action="append",
                        help="repeatable; default: every digits model")
    args = parser.parse_args(argv)
    if args.seed < 1:
        parser.error("seed 0 is `python -m models.default_model` (files without a suffix)")
    for name in args.model or list(MODELS):
        build_and_export(name, args.seed)


if __name__ == "__main__":
    main()
