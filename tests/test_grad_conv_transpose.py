"""The Conv form of stride-1 transposed convolutions (xaisdk.deploy.grad_conv_transpose) against torch's
conv_transpose and ONNX Runtime's own ConvTranspose, over strides, paddings, dilations, groups and ranks."""

import itertools

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from xaisdk.deploy.grad_context import GraphWriter
from xaisdk.deploy.grad_conv_transpose import conv_padding, transposed_convolution

ort = pytest.importorskip("onnxruntime")


def _run(kernel, strides, pads, dilations, output_padding, group, sizes, c_in=4, c_out_group=3, rewrite=True, seed=0):
    rank = len(kernel)
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((c_in, c_out_group, *kernel)).astype(np.float32)
    g = rng.standard_normal((2, c_in, *sizes)).astype(np.float32)
    writer = GraphWriter({"g", "weight"})
    attrs = dict(strides=list(strides), pads=list(pads), dilations=list(dilations), output_padding=list(output_padding),
                 group=group)
    if rewrite:
        out = transposed_convolution(writer, "g", "weight", weight_shape=weight.shape, **attrs)
    else:
        out = writer.op("ConvTranspose", ["g", "weight"], kernel_shape=list(kernel), **attrs)
    graph = helper.make_graph(
        writer.nodes, "t", [helper.make_tensor_value_info("g", TensorProto.FLOAT, ["N", c_in, *sizes])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [None] * (rank + 2))],
        [numpy_helper.from_array(weight, "weight"), *writer.initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"g": g})[0]
    ops = {n.op_type for n in writer.nodes}
    fn = {1: torch.nn.functional.conv_transpose1d, 2: torch.nn.functional.conv_transpose2d,
          3: torch.nn.functional.conv_transpose3d}[rank]
    # the full transposed convolution (no padding), output_padding zeros at its end, then ONNX's pads cropped
    full = fn(torch.from_numpy(g), torch.from_numpy(weight), stride=tuple(strides), groups=group,
              dilation=tuple(dilations)).numpy()
    full = np.pad(full, [(0, 0), (0, 0), *((0, p) for p in output_padding)])
    index = (slice(None), slice(None), *(slice(pads[a], full.shape[2 + a] - pads[rank + a]) for a in range(rank)))
    ref = full[index]
    return got, ref, ops


STRIDE_ONE = [
    # kernel, pads, dilations, group, sizes
    ((3, 3), (1, 1, 1, 1), (1, 1), 1, (7, 6)),
    ((1, 1), (0, 0, 0, 0), (1, 1), 1, (5, 4)),
    ((7, 7), (3, 3, 3, 3), (1, 1), 1, (9, 8)),
    ((3, 3), (0, 2, 1, 0), (1, 1), 1, (5, 5)),
    ((5, 3), (2, 1, 2, 1), (1, 2), 1, (6, 6)),
    ((3, 3), (2, 2, 2, 2), (2, 2), 1, (6, 6)),
    ((3, 3), (1, 1, 1, 1), (1, 1), 4, (5, 5)),  # depthwise: one input and one output channel per group
    ((5, 5), (2, 2, 2, 2), (1, 1), 2, (6, 7)),
    ((7,), (3, 3), (1,), 1, (9,)),
    ((2, 3, 3), (0, 1, 1, 1, 1, 0), (1, 1, 2), 1, (3, 4, 5)),
]


@pytest.mark.parametrize("geometry", STRIDE_ONE, ids=lambda g: f"k{g[0]}p{g[1]}d{g[2]}g{g[3]}")
def test_conv_form_matches_torch_and_conv_transpose(geometry):
    kernel, pads, dilations, group, sizes = geometry
    rank = len(kernel)
    args = (kernel, (1,) * rank, pads, dilations, (0,) * rank, group, sizes)
    got, ref, ops = _run(*args, c_in=4, c_out_group=1 if group == 4 else 3)
    plain, _, _ = _run(*args, c_in=4, c_out_group=1 if group == 4 else 3, rewrite=False)
    assert "ConvTranspose" not in ops and "Conv" in ops
    assert got.shape == ref.shape == plain.shape
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 1e-5 * scale
    assert np.abs(plain - ref).max() <= 1e-5 * scale


def test_every_small_stride_one_geometry():
    """Exhaustive along one axis: kernel 1-5, dilation 1-2, both paddings 0..span, against torch."""
    checked = 0
    for k, d in itertools.product(range(1, 6), (1, 2)):
        span = d * (k - 1)
        for b, e in itertools.product(range(span + 1), range(span + 1)):
            if 6 + span - b - e <= 0:  # no output cell left
                continue
            got, ref, ops = _run((k,), (1,), (b, e), (d,), (0,), 1, (6,), c_in=2, c_out_group=2)
            assert "ConvTranspose" not in ops, (k, d, b, e)
            assert np.abs(got - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1), (k, d, b, e)
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("geometry", [
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (1, 1)),  # strided: ConvTranspose is faster on ONNX Runtime's CPU
    ((1, 1), (2, 2), (0, 0, 0, 0), (1, 1), (1, 0)),
    ((3,), (1,), (5, 0), (1,), (0,)),  # crops past the kernel's span
])
def test_other_geometries_keep_conv_transpose(geometry):
    kernel, strides, pads, dilations, output_padding = geometry
    got, ref, ops = _run(kernel, strides, pads, dilations, output_padding, 1, (6,) * len(kernel))
    assert "ConvTranspose" in ops and "Conv" not in ops
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    assert conv_padding(kernel=3, dilation=1, pad_begin=5, pad_end=0, output_padding=0) is None
