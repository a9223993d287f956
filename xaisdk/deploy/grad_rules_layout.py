"""Gradient rules for the layout ops: Pad, Slice, Gather, Split, Expand, Tile, Where, Cast, Resize.

Each of these is linear in its input-dependent operand (Where: for a fixed condition), so its
gradient is the transposed map. Where that map moves elements along one axis (reflect and edge
padding, strided or reversed slices, gathers with repeated indices, resizing), the rule builds the
(out, in) matrix of the map along that axis in numpy, once, from the node's constants and static
sizes, and applies its transpose with ``MatMul``: repeated indices and overlapping interpolation
weights add up by construction, with no scatter. Cheap cases (constant padding, unit-step slices,
splits) use ``Slice`` / ``Pad`` directly.

>>> sorted(LAYOUT_RULES)
['Cast', 'Expand', 'Gather', 'Pad', 'Resize', 'Slice', 'Split', 'Tile', 'Where']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator

from xaisdk.deploy.grad_context import GradContext, node_attrs, refuse, refuse_deeplift
from xaisdk.methods.deeplift_rules import INPUT_CONDITION

__all__ = ["LAYOUT_RULES", "axis_matrix", "fold_constants", "resize_matrix"]

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def axis_matrix(ctx: GradContext, g: str, matrix: np.ndarray, axis: int, rank: int) -> str:
    """The transpose of ``y = x along axis -> matrix @ x`` applied to ``g``: (..., out, ...) -> (..., in, ...)."""
    w = ctx.w
    matrix = np.asarray(matrix, np.float32)
    if axis == rank - 1:
        return w.op("MatMul", [g, w.const(matrix, hint="axis_matrix")])
    if axis == rank - 2:
        return w.op("MatMul", [w.const(np.ascontiguousarray(matrix.T), hint="axis_matrix"), g])
    perm = [a for a in range(rank) if a != axis] + [axis]
    moved = w.op("MatMul", [w.op("Transpose", [g], perm=perm), w.const(matrix, hint="axis_matrix")])
    return w.op("Transpose", [moved], perm=[int(i) for i in np.argsort(perm)])


def _selection(indices: Sequence[int], size: int) -> np.ndarray:
    """The (len(indices), size) 0/1 matrix picking ``indices`` (repeats give repeated rows)."""
    matrix = np.zeros((len(indices), size), np.float32)
    matrix[np.arange(len(indices)), np.asarray(indices, np.int64)] = 1.0
    return matrix


def _optional_input(node: onnx.NodeProto, i: int) -> str | None:
    return node.input[i] if len(node.input) > i and node.input[i] else None


def _static_dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Every tensor's dims under ONNX shape inference with data propagation (None where unknown)."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    dims: dict[str, list[int | None]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if value.type.tensor_type.HasField("shape"):
            dims[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
    return dims


def _shape_values(node: onnx.NodeProto, dims: dict[str, list[int | None]], partial: dict[str, list[int | None]],
                  values: dict[str, np.ndarray]) -> list[int | None] | None:
    """The entries of a shape vector computed by ``node`` (None where unknown), or None if it is no shape vector.

    Covers ``Shape`` and ``Gather`` / ``Slice`` with constant indices of a (partly known) shape vector:
    the patterns by which traced code reads one static size of a tensor whose batch is symbolic.
    """
    if node.op_type == "Shape":
        known = dims.get(node.input[0])
        if known is None:
            return None
        attrs = node_attrs(node)
        rank = len(known)
        start, end = int(attrs.get("start", 0)), int(attrs.get("end", rank))
        return list(known[slice(start, end)])
    source = partial.get(node.input[0]) if node.input else None
    if source is None or any(name not in values for name in node.input[1:] if name):
        return None
    vector = np.arange(len(source))
    if node.op_type == "Gather" and int(node_attrs(node).get("axis", 0)) == 0:
        picked = vector[values[node.input[1]]]
    elif node.op_type == "Slice":
        args = [values[name] if name else None for name in node.input[1:]] + [None] * (4 - len(node.input[1:]))
        starts, ends, axes, steps = args[:4]
        if axes is not None and any(int(a) not in (0, -1) for a in axes):
            return None
        step = int(steps[0]) if steps is not None else 1
        picked = vector[int(starts[0]):int(ends[0]):step]
    else:
        return None
    return [source[int(i)] for i in np.atleast_1d(picked).ravel()] if np.ndim(picked) else [source[int(picked)]]


def _fold_pass(model: onnx.ModelProto, values: dict[str, np.ndarray], folded: dict[str, np.ndarray]) -> bool:
    """One pass of :func:`fold_constants` over ``model.graph.node`` (edited in place); True if it folded anything."""
    graph = model.graph
    opsets = {op.domain: op.version for op in model.opset_import}
    dims = _static_dims(model)
    partial: dict[str, list[int | None]] = {}
    kept, changed = [], False
    for node in graph.node:
        inputs = [name for name in node.input if name]
        standard = node.domain in ("", "ai.onnx")
        if standard and all(name in values for name in inputs) and node.op_type not in ("RandomNormal", "RandomUniform"):
            outputs = ReferenceEvaluator(node, opsets=opsets).run(None, {name: values[name] for name in inputs})
            for name, value in zip(node.output, outputs):
                values[name] = folded[name] = np.asarray(value)
            changed = True
            continue
        shape = _shape_values(node, dims, partial, values) if standard else None
        if shape is not None and all(d is not None for d in shape):
            # A size that shape inference proves static (not the batch): a constant, so what is computed
            # from it (swin's window padding: Mod, Sub, Concat, Cast...) folds too.
            values[node.output[0]] = folded[node.output[0]] = np.asarray(shape, np.int64).reshape(
                () if node.op_type == "Gather" and not np.ndim(values[node.input[1]]) else -1)
            changed = True
            continue
        if shape is not None:
            partial[node.output[0]] = shape
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in kept for name in node.input} | {out.name for out in graph.output}
    stored = {init.name for init in graph.initializer}
    kept_inits = [init for init in graph.initializer if init.name in used or init.name not in folded]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)  # the next pass's shape inference sees the folded values
    graph.initializer.extend(numpy_helper.from_array(v, n) for n, v in folded.items() if n in used and n not in stored)
    return changed


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every node that depends on constants only replaced by an initializer, and its
    shapes inferred with data propagation (stored as value_info).

    torch's TorchScript exporter with a dynamic batch axis leaves small constant subgraphs in place
    (``F.pad``'s pads are ConstantOfShape -> Concat -> Reshape -> Slice -> Transpose -> Cast), and
    writes ``F.interpolate(size=...)``'s sizes as ``Concat(Shape(x)[:2], sizes)``: without folding
    and data propagation, ONNX shape inference knows no size after such a node, and the gradient
    rules need the pads and the sizes. Sizes read from a tensor (``Shape``, then ``Gather`` or
    ``Slice``) that shape inference proves static count as constants too, so arithmetic on them that
    data propagation does not follow (Swin's ``(window - W % window) % window`` padding) folds.

    >>> from onnx import TensorProto, helper, numpy_helper
    >>> nodes = [helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array([2], np.int64))),
    ...          helper.make_node("Concat", ["two", "two"], ["pads"], axis=0),
    ...          helper.make_node("Pad", ["x", "pads"], ["y"])]
    >>> g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
    ...                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    >>> folded = fold_constants(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    >>> [n.op_type for n in folded.graph.node], [i.name for i in folded.graph.initializer]
    (['Pad'], ['pads'])
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    values = {init.name: numpy_helper.to_array(init) for init in result.graph.initializer}
    folded: dict[str, np.ndarray] = {}
    stated = [v for v in result.graph.value_info]  # shapes the graph states (kept)
    del result.graph.value_info[:]
    while _fold_pass(result, values, folded):  # each pass may prove sizes static that the next one folds
        pass
    result.graph.value_info.extend(v for v in stated if v.name not in folded)
    inferred = onnx.shape_inference.infer_shapes(result, data_prop=True)
    del result.graph.value_info[:]
    result.graph.value_info.extend(inferred.graph.value_info)
    return result


# --------------------------------------------------------------------------- Pad


def _pad_source(position: int, size: int, mode: str) -> int | None:
    """The input index that padded position ``position`` (in input coordinates) copies, or None (constant)."""
    if 0 <= position < size:
        return position
    if mode == "constant":
        return None
    if mode == "edge":
        return min(max(position, 0), size - 1)
    if mode == "wrap":
        return position % size
    period = 2 * (size - 1)  # reflect, without repeating the edge
    if period == 0:
        return 0
    p = position % period
    return p if p < size else period - p


def _pad(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x = node.input[0]
    attrs = node_attrs(node)
    mode = _text(attrs.get("mode", "constant"))
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise refuse(node, f"pad mode {mode!r}")
    rank = len(ctx.shapes.of(x))
    pads_name = _optional_input(node, 1)
    pads = [int(p) for p in (ctx.constant(node, pads_name, "pads") if pads_name else attrs["pads"])]
    axes_name = _optional_input(node, 3)
    axes = [int(a) % rank for a in ctx.constant(node, axes_name, "axes")] if axes_name else list(range(rank))
    for name in node.input[2:3]:
        if name and name in ctx.active:
            raise refuse(node, "an input-dependent padding value")
    count = len(axes)
    begin, end = dict(zip(axes, pads[:count])), dict(zip(axes, pads[count:]))
    moved = [a for a in axes if begin[a] or end[a]]
    if mode == "constant" and all(begin[a] >= 0 and end[a] >= 0 for a in moved):
        if not moved:
            return {x: g}
        sizes = ctx.static(node, x, moved)
        starts = [begin[a] for a in moved]
        ends = [b + s for b, s in zip(starts, sizes)]
        return {x: ctx.w.op("Slice", [g, ctx.w.ints(starts), ctx.w.ints(ends), ctx.w.ints(moved)])}
    for a in moved:
        size = ctx.static(node, x, [a])[0]
        if mode != "constant" and size == 0:
            raise refuse(node, f"{mode} padding of an empty axis")
        out = size + begin[a] + end[a]
        sources = [_pad_source(o - begin[a], size, mode) for o in range(out)]
        matrix = np.zeros((out, size), np.float32)
        for o, src in enumerate(sources):
            if src is not None:
                matrix[o, src] += 1.0
        g = axis_matrix(ctx, g, matrix, a, rank)
    return {x: g}


# --------------------------------------------------------------------------- Slice, Gather, Split


def _slice_indices(start: int, end: int, step: int, size: int) -> list[int]:
    """ONNX Slice's selected indices along one axis (negative values count from the end, then clamped)."""
    if step == 0:
        raise ValueError("step 0")
    start, end = (start + size if start < 0 else start), (end + size if end < 0 else end)
    if step > 0:
        start, end = min(max(start, 0), size), min(max(end, 0), size)
    else:
        start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
    return list(range(start, end, step))


def _slice(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x = node.input[0]
    rank = len(ctx.shapes.of(x))
    starts = [int(v) for v in ctx.constant(node, node.input[1], "starts")]
    ends = [int(v) for v in ctx.constant(node, node.input[2], "ends")]
    axes_name, steps_name = _optional_input(node, 3), _optional_input(node, 4)
    axes = [int(a) % rank for a in ctx.constant(node, axes_name, "axes")] if axes_name else list(range(len(starts)))
    steps = [int(s) for s in ctx.constant(node, steps_name, "steps")] if steps_name else [1] * len(starts)
    if any(s == 0 for s in steps):
        raise refuse(node, "a slice step of 0")
    for axis, start, end, step in zip(axes, starts, ends, steps):
        dims = ctx.shapes.of(x)
        if dims[axis] is None and step == 1 and start == 0 and end >= 2**62:
            continue  # the whole (symbolic) axis
        size = ctx.static(node, x, [axis])[0]
        picked = _slice_indices(start, end, step, size)
        if step == 1 and picked:
            if len(picked) != size:
                pads = [0] * (2 * rank)
                pads[axis], pads[rank + axis] = picked[0], size - picked[-1] - 1
                g = ctx.w.op("Pad", [g, ctx.w.ints(pads)], mode="constant")
        else:
            g = axis_matrix(ctx, g, _selection(picked, size), axis, rank)
    return {x: g}


def _gather(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x, indices_name = node.input[0], node.input[1]
    if indices_name in ctx.active:
        raise refuse(node, "input-dependent indices")
    dims = ctx.shapes.of(x)
    rank = len(dims)
    axis = int(node_attrs(node).get("axis", 0)) % rank
    size = ctx.static(node, x, [axis])[0]
    indices = np.asarray(ctx.constant(node, indices_name, "indices"), np.int64)
    flat = [int(i) % size for i in indices.ravel()]
    if any(not -size <= int(i) < size for i in indices.ravel()):
        raise refuse(node, f"indices outside the axis of size {size}")
    if indices.ndim != 1:  # fold the index dims of g into one axis of len(flat)
        after = [d if d is not None else -1 for d in dims[axis + 1:]]
        g = ctx.w.op("Reshape", [g, ctx.w.ints([0] * axis + [len(flat)] + after)])
    return {x: axis_matrix(ctx, g, _selection(flat, size), axis, rank)}


def _split_sizes(ctx: GradContext, node: onnx.NodeProto, axis: int) -> list[int]:
    size = ctx.static(node, node.input[0], [axis])[0]
    split_name = _optional_input(node, 1)
    if split_name:
        return [int(s) for s in ctx.constant(node, split_name, "split sizes")]
    attrs = node_attrs(node)
    if "split" in attrs:
        return [int(s) for s in attrs["split"]]
    parts = int(attrs.get("num_outputs", len(node.output)))
    chunk = -(-size // parts)
    return [min(chunk, size - i * chunk) for i in range(parts)]


def _split(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    """Each used output's gradient padded back into place with zeros; the pieces are summed (unused: zeros)."""
    x = node.input[0]
    rank = len(ctx.shapes.of(x))
    axis = int(node_attrs(node).get("axis", 0)) % rank
    sizes = _split_sizes(ctx, node, axis)
    total = sum(sizes)
    grads = ctx.output_grads or {node.output[0]: g}
    result, offset = None, 0
    for name, size in zip(node.output, sizes):
        if name and grads.get(name):
            pads = [0] * (2 * rank)
            pads[axis], pads[rank + axis] = offset, total - offset - size
            piece = ctx.w.op("Pad", [grads[name], ctx.w.ints(pads)], mode="constant") if size != total else grads[name]
            result = piece if result is None else ctx.w.op("Add", [result, piece])
        offset += size
    return {} if result is None else {x: result}


# --------------------------------------------------------------------------- Expand, Tile, Where, Cast


def _expand(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    if node.input[1] in ctx.active:
        raise refuse(node, "an input-dependent target shape")
    return {node.input[0]: ctx.unbroadcast(g, node.output[0], node.input[0])}


def _tile(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x = node.input[0]
    repeats = [int(r) for r in ctx.constant(node, node.input[1], "repeats")]
    dims = ctx.shapes.of(x)
    if all(r == 1 for r in repeats):
        return {x: g}
    unknown = [i for i, d in enumerate(dims) if d is None]
    if len(unknown) > 1 or any(repeats[i] != 1 for i in unknown):
        raise refuse(node, f"tiling needs static sizes on every axis but one unrepeated axis, got {dims}")
    split = []
    for r, d in zip(repeats, dims):
        split += [r, -1 if d is None else d]
    blocks = ctx.w.op("Reshape", [g, ctx.w.ints(split)])
    return {x: ctx.w.op("ReduceSum", [blocks, ctx.w.ints(range(0, 2 * len(dims), 2))], keepdims=0)}


def _where(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    condition, a, b = node.input
    if ctx.deeplift and condition not in ctx.constants:
        raise refuse_deeplift(node, INPUT_CONDITION)
    zero = ctx.w.const(0.0)
    if a == b:  # where(c, x, x): both branches are x
        return {a: g}
    grads = {}
    if a in ctx.active:
        grads[a] = ctx.unbroadcast(ctx.w.op("Where", [condition, g, zero]), node.output[0], a)
    if b in ctx.active:
        grads[b] = ctx.unbroadcast(ctx.w.op("Where", [condition, zero, g]), node.output[0], b)
    return grads


def _cast(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    to = int(node_attrs(node)["to"])
    if to not in _FLOAT_TYPES:
        raise refuse(node, f"a cast to the non-float type {TensorProto.DataType.Name(to)} on the input's path")
    if to != TensorProto.FLOAT:
        raise refuse(node, f"a cast to {TensorProto.DataType.Name(to)} on the input's path (the gradient graph is float32)")
    return {node.input[0]: g}


# --------------------------------------------------------------------------- Resize


def _source_coordinates(out_size: int, in_size: int, scale: float, mode: str) -> np.ndarray:
    """ONNX Resize's input coordinate of each output index (float32 arithmetic, as ONNX Runtime)."""
    o = np.arange(out_size, dtype=np.float32)
    s = np.float32(scale)
    if mode == "half_pixel":
        return (o + np.float32(0.5)) / s - np.float32(0.5)
    if mode == "pytorch_half_pixel":
        return (o + np.float32(0.5)) / s - np.float32(0.5) if out_size > 1 else np.zeros(1, np.float32)
    if mode == "asymmetric":
        return o / s
    if mode == "align_corners":
        if out_size == 1:
            return np.zeros(1, np.float32)
        return o * np.float32(in_size - 1) / np.float32(out_size - 1)
    raise ValueError(mode)


def _nearest(coords: np.ndarray, rule: str) -> np.ndarray:
    if rule == "floor":
        picked = np.floor(coords)
    elif rule == "ceil":
        picked = np.ceil(coords)
    elif rule == "round_prefer_ceil":
        picked = np.floor(coords + np.float32(0.5))
    else:  # round_prefer_floor
        picked = np.ceil(coords - np.float32(0.5))
    return picked.astype(np.int64)


def resize_matrix(in_size: int, out_size: int, scale: float, mode: str, coordinates: str, nearest: str) -> np.ndarray:
    """The (out, in) matrix of ONNX Resize along one axis, for ``nearest`` and ``linear`` modes.

    >>> resize_matrix(2, 4, 2.0, "linear", "half_pixel", "round_prefer_floor").tolist()
    [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]]
    """
    coords = _source_coordinates(out_size, in_size, scale, coordinates)
    matrix = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    if mode == "nearest":
        matrix[rows, np.clip(_nearest(coords, nearest), 0, in_size - 1)] = 1.0
        return matrix
    clamped = np.clip(coords.astype(np.float64), 0.0, in_size - 1)
    low = np.floor(clamped).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    frac = clamped - low
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


def _resize(ctx: GradContext, node: onnx.NodeProto, g: str) -> dict[str, str]:
    x = node.input[0]
    attrs = node_attrs(node)
    mode = _text(attrs.get("mode", "nearest"))
    coordinates = _text(attrs.get("coordinate_transformation_mode", "half_pixel"))
    nearest = _text(attrs.get("nearest_mode", "round_prefer_floor"))
    if mode not in ("nearest", "linear"):
        raise refuse(node, f"resize mode {mode!r} (supported: nearest, linear)")
    if coordinates not in ("half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners"):
        raise refuse(node, f"coordinate_transformation_mode {coordinates!r}")
    if int(attrs.get("antialias", 0)) and mode == "linear":
        raise refuse(node, "antialiased resizing")
    if _text(attrs.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
        raise refuse(node, "keep_aspect_ratio_policy other than 'stretch'")
    rank = len(ctx.shapes.of(x))
    axes = [int(a) % rank for a in attrs.get("axes", range(rank))]
    scales_name = _optional_input(node, 2)
    scales = None
    if scales_name:
        values = ctx.constant(node, scales_name, "scales").ravel()
        scales = dict(zip(axes, (float(v) for v in values))) if values.size else None
    grad = g
    for axis in axes:
        in_dim, out_dim = ctx.shapes.of(x)[axis], ctx.shapes.of(node.output[0])[axis]
        if scales is not None and scales[axis] == 1.0:
            continue
        if scales is None and (in_dim is not None and in_dim == out_dim or axis == 0 and in_dim is None and out_dim is None):
            continue  # an axis left alone (the batch)
        in_size = ctx.static(node, x, [axis])[0]
        out_size = ctx.static(node, node.output[0], [axis])[0]
        scale = scales[axis] if scales is not None else float(np.float32(out_size) / np.float32(in_size))
        matrix = resize_matrix(in_size, out_size, scale, mode, coordinates, nearest)
        grad = axis_matrix(ctx, grad, matrix, axis, rank)
    return {x: grad}


LAYOUT_RULES = {
    "Pad": _pad,
    "Slice": _slice,
    "Gather": _gather,
    "Split": _split,
    "Expand": _expand,
    "Tile": _tile,
    "Where": _where,
    "Cast": _cast,
    "Resize": _resize,
}
