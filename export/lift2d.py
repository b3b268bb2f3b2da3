"""A sequence student's graph run as an image graph: every 1-D Conv becomes a 2-D Conv over [N, C, 1, T].

onnxruntime's CPU kernels for 1-D convolutions (depthwise ones above all) are far slower than its 2-D ones: the
cnn1d student of a 3x50 gyro view ran 3.3x faster at batch 1 and 9.2x at batch 32 once lifted (BENCHMARKS.md,
"Sequence students as 2-D graphs"). The rewrite is exact up to float rounding, and the caller checks it against
torch. The region lifted to 4-D is every 1-D Conv and each node linked to one through ops that do not care about
the extra axis (elementwise ones, BatchNormalization); a tensor entering the region gets one Unsqueeze (axis 2), one
leaving it a Squeeze, and an ``Unsqueeze(axis 2)`` that leaves it (the pooling of a 1-D pool exported as 2-D) is
dropped instead. Constant operands of rank 2 or more get the axis too ([C, 1] -> [C, 1, 1])."""

from __future__ import annotations

from pathlib import Path

import numpy as np

UNARY = {"Relu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Softplus",
         "Identity", "Neg", "Abs", "BatchNormalization"}  # (Clip's bounds and BatchNormalization's per-channel
BINARY = {"Add", "Sub", "Mul", "Div"}  # parameters are rank 0 or 1: they broadcast the same way in 4-D)
AXIS = "lift2d_axis"


def conv1d_as_conv2d(path: Path) -> int:
    """Rewrite the ONNX file at ``path`` in place; returns how many 1-D Convs were lifted (0: file untouched)."""
    import onnx
    from onnx import helper, numpy_helper

    from cmcd_edge.export.compact import constants, drop_unused_constants, ranks, readers

    model = onnx.load(str(path))
    g = model.graph
    rank = ranks(model)
    consts = constants(model)
    producer = {o: n for n in g.node for o in n.output}
    users = readers(g)

    def conv1d(n) -> bool:
        return n.op_type == "Conv" and n.input[1] in consts and consts[n.input[1]].ndim == 3

    def liftable(n) -> bool:  # every computed input and output a rank-3 tensor; constants rank 3 or less
        if not (conv1d(n) or n.op_type in UNARY or n.op_type in BINARY):
            return False
        ins = [i for i in n.input if i and i not in consts]
        return (all(rank.get(t) == 3 for t in [*ins, *n.output])
                and all(consts[i].ndim <= 3 for i in n.input if i in consts))

    region = {id(n): n for n in g.node if conv1d(n) and liftable(n)}
    todo = list(region.values())
    while todo:  # grow through the agnostic ops on either side
        n = todo.pop()
        near = [producer[i] for i in n.input if i in producer] + [u for o in n.output for u in users.get(o, [])]
        for m in near:
            if id(m) not in region and liftable(m):
                region[id(m)] = m
                todo.append(m)
    lifted = [n for n in region.values() if conv1d(n)]
    if not lifted:
        return 0

    four = {o: f"{o}_4d" for n in region.values() for o in n.output}  # tensors computed inside, 4-D
    outputs = {o.name for o in g.output}

    def dropped(u) -> bool:  # an Unsqueeze(axis 2) of a region tensor: its readers read the 4-D tensor instead
        return (id(u) not in region and u.op_type == "Unsqueeze" and u.input[0] in four and _axis2(u, consts)
                and u.output[0] not in outputs)

    entering = {}  # rank-3 tensors read by the region but made outside it -> their Unsqueeze'd name
    g.initializer.append(numpy_helper.from_array(np.array([2], np.int64), AXIS))
    for n in region.values():
        if conv1d(n):
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            pads = a.get("pads", [0, 0])
            n.ClearField("attribute")
            n.attribute.extend([helper.make_attribute("kernel_shape", [1, int(consts[n.input[1]].shape[-1])]),
                                helper.make_attribute("pads", [0, pads[0], 0, pads[1]]),
                                helper.make_attribute("strides", [1, a.get("strides", [1])[0]]),
                                helper.make_attribute("dilations", [1, a.get("dilations", [1])[0]]),
                                helper.make_attribute("group", a.get("group", 1))])
            reshape = {1}  # the weight: [O, I, k] -> [O, I, 1, k]
        else:
            reshape = {k for k, i in enumerate(n.input) if n.op_type in BINARY and i in consts and consts[i].ndim >= 2}
        for k, i in enumerate(n.input):
            if not i:
                continue
            if i in four:
                n.input[k] = four[i]
            elif k in reshape:
                name = f"{i}_4d_{n.name or id(n)}"  # a copy: the constant may be read outside the region too
                g.initializer.append(numpy_helper.from_array(np.expand_dims(consts[i], -2), name))
                n.input[k] = name
            elif i not in consts:
                n.input[k] = entering.setdefault(i, f"{i}_4d")
        n.output[:] = [four[o] for o in n.output]
    source = {t4: t for t, t4 in entering.items()}
    nodes = []
    for n in list(g.node):
        for i in n.input:
            if i in source:
                nodes.append(helper.make_node("Unsqueeze", [source.pop(i), AXIS], [i], name=f"lift2d_in_{len(nodes)}"))
        if dropped(n):
            for u in users.get(n.output[0], []):
                u.input[:] = [four[n.input[0]] if x == n.output[0] else x for x in u.input]
            continue
        nodes.append(n)
        for t, t4 in four.items():
            if t4 in n.output and (t in outputs or any(id(u) not in region and not dropped(u) for u in users.get(t, []))):
                nodes.append(helper.make_node("Squeeze", [t4, AXIS], [t], name=f"lift2d_out_{t}"))
    del g.node[:]
    g.node.extend(nodes)
    g.ClearField("value_info")
    drop_unused_constants(g)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return len(lifted)


def _axis2(n, consts: dict) -> bool:
    """An Unsqueeze of a rank-3 tensor at axis 2 (or -2): what the region's 4-D tensors already are."""
    axes = consts.get(n.input[1]) if len(n.input) > 1 else None
    return axes is not None and [int(a) for a in np.atleast_1d(axes)] in ([2], [-2])
