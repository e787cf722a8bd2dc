"""`Model`: an ONNX graph's structure plus its weights as numpy arrays plus static shapes.

The graph keeps the structure in a `GraphProto` whose initializer list is empty; the
weights live in `Model.inits` as numpy arrays (the single source of truth), so passes
slice arrays, not protobufs, and a >2 GB model is never serialised whole. onnxprune/load.py
builds one from a file or a proto.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import GraphIndex, set_dims



@dataclass
class Model:
    graph: onnx.GraphProto          # structure only; initializer list is empty
    inits: dict[str, np.ndarray]    # initializer name -> array
    shapes: dict[str, tuple]        # every tensor's static shape, inputs fixed as requested
    opset_imports: list = field(default_factory=list)
    ir_version: int = 8
    meta: dict = field(default_factory=dict)   # producer_name etc., copied to the output
    input_shapes: dict[str, tuple] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what loading changed, for the report
    external_data: bool = False     # the input kept its weights in an external-data file
    functions: list = field(default_factory=list)   # model-local functions, inlined at load
    _index: GraphIndex | None = field(default=None, repr=False, compare=False)

    # -- graph queries ---------------------------------------------------------------------
    def index(self) -> GraphIndex:
        """Producers, consumers and nodes by name, built once while the graph is unchanged.
        Whoever edits the graph calls `touch()` (the pass pipeline does, after each pass)."""
        if self._index is None:
            self._index = GraphIndex.of(self.graph)
        return self._index

    def touch(self) -> None:
        self._index = None

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.graph.output]

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.graph.input if i.name not in self.inits]

    def to_proto(self, with_shapes: bool = False, with_initializers: bool = True) -> onnx.ModelProto:
        g = copy.deepcopy(self.graph)
        del g.initializer[:]
        if with_initializers:
            g.initializer.extend(numpy_helper.from_array(a, name) for name, a in self.inits.items())
        for inp in g.input:  # old exporters also list initializers as inputs: keep them in step
            if inp.name in self.inits:
                set_dims(inp, self.inits[inp.name].shape, exact_rank=True)
        if not with_shapes:
            del g.value_info[:]
        m = onnx.helper.make_model(g, opset_imports=self.opset_imports)
        m.ir_version = self.ir_version
        for k, v in self.meta.items():
            if k == "metadata_props":  # e.g. PP-OCR's character dictionary: must survive
                onnx.helper.set_model_props(m, dict(v))
            else:
                setattr(m, k, v)
        return m

    def copy(self) -> "Model":
        # Arrays are shared: passes replace initializers with new arrays, never edit in place.
        return Model(copy.deepcopy(self.graph), dict(self.inits),
                     dict(self.shapes), list(self.opset_imports), self.ir_version, dict(self.meta),
                     dict(self.input_shapes), list(self.notes), self.external_data, list(self.functions))
