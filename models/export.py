"""Export zoo models to ONNX, with BatchNormalization kept or folded.

Pruning has to cope with both shapes of exported graph: BN left as its own
node (what training frameworks hand over) and BN folded into the conv (what
``torch.onnx.export`` does by default in eval mode).  ``keep_bn`` selects one.
"""

import inspect
import io
import warnings

import numpy as np
import onnx
import torch
from torch import nn

from . import zoo

_BN = nn.modules.batchnorm._BatchNorm

# name -> (factory, default input shape).  Shapes are small so tests stay fast;
# every stem downsamples by 32 (small_resnet by 4), so 32x32 ends at 1x1 and
# 64x64 at 2x2.  VGG uses 64x64 so its Flatten really expands 512x2x2.
ZOO = {
    "small_resnet": (zoo.small_resnet, (1, 1, 16, 16)),
    "resnet18": (zoo.resnet18, (1, 3, 32, 32)),
    "resnet50": (zoo.resnet50, (1, 3, 64, 64)),
    "resnet101": (zoo.resnet101, (1, 3, 64, 64)),
    "resnet152": (zoo.resnet152, (1, 3, 64, 64)),
    "resnext_small": (zoo.resnext_small, (1, 3, 32, 32)),
    "resnext50_32x4d": (zoo.resnext50_32x4d, (1, 3, 64, 64)),
    "regnety_400mf": (zoo.regnety_400mf, (1, 3, 32, 32)),
    "vgg11_bn": (zoo.vgg11_bn, (1, 3, 64, 64)),
    "mobilenet_v2": (zoo.mobilenet_v2, (1, 3, 32, 32)),
    "mobilenet_v3_small": (zoo.mobilenet_v3_small, (1, 3, 32, 32)),
    **{f"efficientnet_b{b}": (lambda num_classes=10, b=b: zoo.efficientnet(b, num_classes),
                              (1, 3, 32, 32)) for b in range(5)},
    "densenet_small": (zoo.densenet, (1, 3, 32, 32)),
    "densenet121": (zoo.densenet121, (1, 3, 32, 32)),
    "googlenet": (zoo.googlenet, (1, 3, 32, 32)),
}


def export_onnx(module, input_shape, path=None, opset=17, keep_bn=True, unshare=False, dynamic_size=False):
    """Trace ``module`` (eval mode) to ONNX with input "input" and output "logits",
    static shapes (``dynamic_size``: batch, height and width symbolic, as a deployment
    export that takes any image size).  Returns the ModelProto and also saves it when
    ``path`` is given.

    keep_bn=True: TrainingMode.PRESERVE on an eval module skips the exporter's
    conv-BN fusion (it only runs for TrainingMode.EVAL), and constant folding
    is off so nothing else pre-computes BN either; BN still runs in inference
    mode (training_mode=0).  keep_bn=False: the default eval export, BN folded.
    """
    module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter warns that it is legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, (torch.randn(*input_shape),), buf, dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["logits"],
            training=torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL,
            do_constant_folding=not keep_bn,
            dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N"}} if dynamic_size else None,
        )
    proto = onnx.load_from_string(buf.getvalue())
    if unshare:  # by default keep the exporter's shared weights: onnxprune must handle them
        _unshare_initializers(proto)
    if keep_bn:
        expected = sum(isinstance(m, _BN) for m in module.modules())
        found = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
        if found != expected:
            raise RuntimeError(f"expected {expected} BatchNormalization nodes, got {found}")
    if path is not None:
        onnx.save(proto, path)
    return proto


def _unshare_initializers(proto):
    """The exporter de-duplicates equal initializers (e.g. a fresh BN's ones and
    zeros) and re-creates them as Identity nodes.  Give each consumer its own
    copy so every parameter is a plain initializer that can be sliced alone."""
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        graph.initializer.append(copy)
        graph.node.remove(node)


@torch.no_grad()
def randomize_bn(module, input_shape, batch=32):
    """Give every BatchNorm non-trivial, data-consistent parameters.

    A fresh BN (mean 0, var 1, gamma 1, beta 0) is nearly an identity, which
    makes BN-aware pruning and folding tests vacuous.  Absolute random stats,
    however, compound through 150 layers into overflow or vanishing outputs.
    So each BN is calibrated on the activations it actually sees (one eval pass
    of random input, in execution order), then perturbed: running_var is the
    measured variance (floored at a tenth of the layer mean, so no channel gets
    a huge gain from a lucky small sample) times U(0.5, 2), running_mean is
    shifted by up to 0.2 std, gamma ~ U(0.5, 1.5), beta ~ U(-0.5, 0.5).

    The last BN of each residual branch gets gamma ~ U(0.1, 0.5) instead, as
    in trained ResNets: with O(1) branches a 50-block random ResNet amplifies
    float32 rounding to ~3e-4 of its output, too coarse for exactness tests.
    Uses the global torch RNG, so seed before calling.
    """
    branch_ends = {[m for m in r.body.modules() if isinstance(m, _BN)][-1]
                   for r in module.modules() if isinstance(r, zoo.Residual)}

    def calibrate(bn, args):
        x = args[0].transpose(0, 1).flatten(1)  # channels x samples
        c = bn.num_features
        mean, var = x.mean(1), x.var(1, unbiased=False)
        bn.running_mean.copy_(mean + 0.2 * var.sqrt() * (2 * torch.rand(c) - 1))
        var = torch.maximum(var, 0.1 * var.mean() + 1e-3)
        bn.running_var.copy_(var * (0.5 + 1.5 * torch.rand(c)))
        low, high = (0.1, 0.5) if bn in branch_ends else (0.5, 1.5)
        bn.weight.copy_(low + (high - low) * torch.rand(c))
        bn.bias.copy_(torch.rand(c) - 0.5)

    module.eval()
    hooks = [m.register_forward_pre_hook(calibrate) for m in module.modules()
             if isinstance(m, _BN)]
    try:
        module(torch.randn(batch, *input_shape[1:]))
    finally:
        for h in hooks:
            h.remove()
    return module


def build_module(name, input_shape=None, seed=0, num_classes=10):
    """Seeded zoo model with randomized BN; returns (module, input_shape)."""
    factory, default_shape = ZOO[name]
    shape = tuple(input_shape or default_shape)
    torch.manual_seed(seed)
    kwargs = {"num_classes": num_classes}
    if "input_size" in inspect.signature(factory).parameters:  # VGG's head depends on it
        kwargs["input_size"] = shape[-1]
    module = factory(**kwargs)
    return randomize_bn(module, shape), shape


def build(name, input_shape=None, keep_bn=True, seed=0):
    """Zoo model ``name`` as an ONNX ModelProto (deterministic for a given seed)."""
    module, shape = build_module(name, input_shape, seed)
    return export_onnx(module, shape, keep_bn=keep_bn)


def check_export(module, proto, tol=1e-4, seed=0):
    """Run ``proto`` in onnxruntime and compare with ``module`` on a random input.
    Returns max|diff| / max(1, max|output|); raises if that exceeds ``tol``."""
    import onnxruntime as ort

    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    with torch.no_grad():
        want = module.eval()(torch.from_numpy(x)).numpy()
    err = float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))
    if not err <= tol:
        raise AssertionError(f"onnxruntime differs from torch: {err:.3g} > {tol}")
    return err
