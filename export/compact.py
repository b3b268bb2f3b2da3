"""Shrink a quantized ONNX file without changing what it computes.

A 30k-parameter student's INT8 weights take ~30 KB, so per-tensor bookkeeping is a large share of the file:
onnxruntime's quantizer writes an all-zero zero point per output channel for every int8 weight and int32 bias
(DequantizeLinear's zero point is optional and 0 by default), long tensor and node names, and metadata. ``compact``
drops those zero points, replaces each stored bias scale that is exactly input scale x weight scale (how the quantizer
defines it) by a Mul of those two (onnxruntime folds it back when the session loads), renames internal tensors and
nodes to short names (graph inputs and outputs keep theirs), drops value_info, node metadata and unused opset imports.
Outputs are bit-identical; the export checks that on the test split.
"""

from __future__ import annotations

from pathlib import Path


def constants(model) -> dict:
    """Every constant tensor of an ONNX graph by name: initializers and Constant nodes' values, as numpy arrays."""
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def ranks(model) -> dict[str, int]:
    """The rank of every tensor of ``model`` that ONNX shape inference can tell (graph inputs, computed tensors and
    graph outputs)."""
    import onnx

    g = onnx.shape_inference.infer_shapes(model).graph
    return {v.name: len(v.type.tensor_type.shape.dim) for v in [*g.value_info, *g.input, *g.output]
            if v.type.tensor_type.HasField("shape")}


def readers(g) -> dict[str, list]:
    """Each tensor name of graph ``g`` -> the nodes that read it, in graph order."""
    out: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def drop_unused_constants(g) -> None:
    """Remove the initializers and Constant nodes no node or graph output reads (left by rewrites of the graph)."""
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    g.ClearField("initializer")
    g.initializer.extend(keep)
    for n in [n for n in g.node if n.op_type == "Constant" and n.output[0] not in used]:
        g.node.remove(n)


def compact(path: Path, derive_bias_scales: bool = True) -> dict:
    """Rewrite ``path`` in place; returns {"bytes_before", "bytes_after"}. ``derive_bias_scales`` is for runtimes that
    fold constants before fusing QDQ groups (onnxruntime); TensorRT wants every Q/DQ scale an initializer."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    before = path.stat().st_size
    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type != "DequantizeLinear" or len(n.input) < 3 or n.input[2] not in inits:
            continue
        zp = numpy_helper.to_array(inits[n.input[2]])
        x = inits.get(n.input[0])  # a weight or bias (an initializer), never an activation
        # int32 bias zero points only: dropping the int8 weight ones changes which kernels onnxruntime fuses
        if x is not None and zp.dtype == np.int32 and not zp.any():
            del n.input[2]
    if derive_bias_scales:
        _derive_bias_scales(model)
    drop_unused_constants(g)

    io = {i.name for i in g.input} | {o.name for o in g.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in io:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for i in g.initializer:
        i.name = short(i.name)
    for k, n in enumerate(g.node):
        n.input[:] = [short(x) for x in n.input]
        n.output[:] = [short(x) for x in n.output]
        n.name = f"n{k}"
        n.doc_string = ""
        n.ClearField("metadata_props")
    g.ClearField("value_info")  # shape hints only; onnxruntime infers them again
    domains = {n.domain or "" for n in g.node} | {""}
    opsets = [o for o in model.opset_import if (o.domain or "") in domains]
    model.ClearField("opset_import")
    model.opset_import.extend(opsets)
    model.ClearField("metadata_props")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"bytes_before": before, "bytes_after": path.stat().st_size}


def _derive_bias_scales(model) -> int:
    """Gemm/Conv(DQ(x), DQ(w), DQ(b)): the int32 bias's scale is by definition scale(x) * scale(w). Where the stored
    bias scale equals that product bit for bit, compute it with a Mul node instead of storing it (one float per output
    channel). Returns how many were replaced."""
    import numpy as np
    import onnx

    g = model.graph
    consts = constants(model)
    dq = {n.output[0]: n for n in g.node if n.op_type == "DequantizeLinear"}
    added = []
    for n in g.node:
        if n.op_type not in ("Gemm", "Conv") or len(n.input) < 3 or not all(i in dq for i in n.input[:3]):
            continue
        x, w, b = (dq[i] for i in n.input[:3])
        if b.input[0] not in consts or consts[b.input[0]].dtype != np.int32:
            continue
        if not all(d.input[1] in consts for d in (x, w, b)):
            continue
        sx, sw, sb = (consts[d.input[1]] for d in (x, w, b))
        product = np.multiply(sx, sw, dtype=np.float32)
        if sb.dtype != np.float32 or product.shape != sb.shape or product.tobytes() != sb.tobytes():
            continue
        out = b.input[1] + "_derived"
        added.append(onnx.helper.make_node("Mul", [x.input[1], w.input[1]], [out]))
        b.input[1] = out
    nodes = added + list(g.node)
    g.ClearField("node")
    g.node.extend(nodes)
    return len(added)
