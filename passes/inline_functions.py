"""Inline model-local functions (FunctionProto), as torch's dynamo exporter and onnxscript
write them: onnxruntime runs such models, and the analysis needs to see the operators
inside. onnx ships the inliner; only functions of the model itself are expanded."""
from __future__ import annotations

import onnx
import onnx.inliner

from onnxprune.errors import OnnxPruneError


def run(model, step) -> None:
    if not model.functions:
        return
    proto = onnx.helper.make_model(model.graph, opset_imports=model.opset_imports,
                                   functions=model.functions)
    proto.ir_version = model.ir_version
    try:
        inlined = onnx.inliner.inline_local_functions(proto)
    except Exception as e:
        raise OnnxPruneError(f"cannot inline the model's local functions: {str(e).splitlines()[0]}") from None
    model.graph.CopyFrom(inlined.graph)
    del model.graph.initializer[:]
    model.notes.append(f"inlined {len(model.functions)} model-local function(s)")
    model.functions = []
    used = {n.domain for n in model.graph.node}
    # the functions' own domains are no longer needed once nothing calls them
    model.opset_imports = [o for o in inlined.opset_import if o.domain in used | {"", "ai.onnx"}]
