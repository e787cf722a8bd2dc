"""What the CLI's commands share for their files: the paths they will write (checked before
any work), the --input-shape list, and writing a model with its texts (report, plan, JSON)
so that a failure leaves neither half behind."""
from __future__ import annotations

import os

from . import progress
from .errors import OnnxPruneError


def save(save_model, slim, path: str) -> None:
    with progress.stage("save"):
        save_model(slim, path, check=True)


def write(texts, save=None) -> None:
    """Write the texts (path, text; no path: skipped) and, with `save`, the model: texts go
    to temporary files first and are renamed after the model is saved, so a failure
    anywhere leaves no report without its model and no temporary file."""
    from .io import publish_text, stage_text   # onnx loads only when something is written
    staged = []
    try:
        for path, text in texts:
            if path:
                staged.append((stage_text(path, text), path))
        if save is not None:
            save()
        for tmp, path in staged:
            publish_text(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.remove(tmp)


def input_shapes(specs) -> dict[str, tuple]:
    """--input-shape values; one input given twice must be given the same shape."""
    from .load import parse_input_shapes
    shapes: dict[str, tuple] = {}
    for spec in specs:
        (name, shape), = parse_input_shapes([spec]).items()
        if shapes.get(name, shape) != shape:
            raise OnnxPruneError(f"--input-shape gives '{name}' two different shapes: "
                                 f"{','.join(map(str, shapes[name]))} and {','.join(map(str, shape))}")
        shapes[name] = shape
    return shapes


def check_targets(args) -> None:
    """Every path we will write: not one we read, not each other, writable (paths.check_targets).
    Checked before any work so that a bad path never leaves some files written."""
    from .paths import check_targets as check
    check(args.input, args.output, getattr(args, "report", None),
                  getattr(args, "plan_out", None), getattr(args, "plan", None))
