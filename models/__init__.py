"""Reference models for onnxprune tests and benchmarks.

    from models import build, ZOO
    proto = build("resnet50")                 # BN kept, randomized BN stats
    proto = build("resnet50", keep_bn=False)  # BN folded into the convs

The export helpers are imported lazily so that ``models.digits`` (numpy and
scikit-learn only) works without torch installed.
"""

import importlib

__all__ = ["ZOO", "build", "build_module", "check_export", "export_onnx", "randomize_bn"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(".export", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
