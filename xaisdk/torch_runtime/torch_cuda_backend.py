"""The ``torch-cuda`` backend: a torch classifier on a CUDA GPU behind the Backend protocol, with a fused IG loop.

Imported only explicitly (``from xaisdk.torch_runtime.torch_cuda_backend import TorchCudaBackend``). The
protocol's primitives are those of :class:`~xaisdk.torch_runtime.torch_backend.TorchBackend` computed on
the GPU (the same autograd gradients and DeepLIFT rescale hooks). On top of them,
:meth:`TorchCudaBackend.fused_integrated_gradients` runs the whole Integrated Gradients loop on the
device: the inputs are copied to the GPU once; per chunk of (sample, step) rows the CUDA kernel of
``xaisdk._ext_cuda`` writes the scaled inputs into the static input buffer of a CUDA graph that
captures the gradient step (forward, then autograd backward of ``sum(weights * logits)`` w.r.t. the
input) for the fixed chunk shape, the graph is replayed, and the accumulate kernel adds the chunk's
gradients; after the last chunk the finalize kernel multiplies by ``x - baseline`` and the result
comes back in one copy. Without the extension (or where its CUDA runtime sees no GPU) the same loop
runs with torch ops on the device.

Numerics follow torch's global switches: on Ampere and newer GPUs torch may run convolutions in TF32
(``torch.backends.cudnn.allow_tf32``, on by default), which is about 1e-3 relative; switch it off for
float32 agreement with the CPU reference.
"""

from __future__ import annotations

import copy
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from xaisdk.attribution._inputs import weighted_gradient
from xaisdk.attribution.deeplift import EPS, deeplift_refusal, rescale_multipliers, unsupported_error
from xaisdk.errors import InputError
from xaisdk.methods.common import chunks
from xaisdk.models.checkpoint import Classifier
from xaisdk.models.ganmex import GanmexModel
from xaisdk.runtime.arrays import as_float32
from xaisdk.torch_runtime import cuda_kernels
from xaisdk.torch_runtime.model_spec import model_generator, model_input_shape, model_value_range

__all__ = ["TorchCudaBackend"]

# Captured gradient steps kept per backend, one per chunk shape (each holds its own memory pool).
_MAX_GRAPHS = 4
# Eager iterations before capture, on the capture stream: they create the cuDNN/cuBLAS handles and
# workspaces and fill the allocator, which must not happen during capture.
_WARMUP_STEPS = 3


class TorchCudaBackend:
    """A torch classifier (and optionally its GANMEX generator) on a CUDA GPU, behind the Backend protocol.

    ``model`` is a ``torch.nn.Module``, a loaded :class:`~xaisdk.models.Classifier` or a
    :class:`~xaisdk.models.GanmexModel`; the backend works on its own copy on ``device`` (the
    caller's module is not moved), in eval mode with gradients w.r.t. the weights switched off. The
    copy is taken here: it explains the model as it was at construction (hooks included), and later
    changes to the caller's module are not seen; build a new backend for a changed model.
    ``input_shape``, ``value_range`` and ``generator`` are as for
    :class:`~xaisdk.torch_runtime.torch_backend.TorchBackend`. ``chunk_size`` rows go through the model
    per pass, and one fused-IG chunk holds ``min(chunk_size, N * S)`` (sample, step) rows.

    ``cuda_graph=True`` captures the fused-IG gradient step as a CUDA graph, once per chunk shape
    (the first call with a new shape pays for a few warm-up passes and the capture; up to four shapes
    are kept); ``False`` runs the same step eagerly. ``compile=True`` runs that step through
    ``torch.compile(model)``: the first call per chunk shape compiles forward and backward, which
    takes seconds to minutes, so it pays off only for long runs; the other methods use the plain
    module. Calls are serialized by a lock: they share one GPU and the static buffers of the graphs.

    Constructing it without a CUDA GPU raises :class:`~xaisdk.InputError`:

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> try:
    ...     ok = TorchCudaBackend(net, input_shape=(1, 2, 2)).num_classes == 3
    ... except InputError as err:
    ...     ok = str(err).startswith("TorchCudaBackend needs a CUDA GPU")
    >>> ok
    True
    """

    name = "torch-cuda"

    def __init__(
        self,
        model: nn.Module | Classifier | GanmexModel,
        *,
        device: str | torch.device = "cuda",
        chunk_size: int = 256,
        cuda_graph: bool = True,
        compile: bool = False,
        input_shape: tuple[int, ...] | None = None,
        value_range: tuple[float, float] | None = None,
        generator: Any = None,
        eps: float = EPS,
    ) -> None:
        self.device = _cuda_device(device)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise InputError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
        self.chunk_size = int(chunk_size)
        self.cuda_graph = bool(cuda_graph)
        self.compiled = bool(compile)
        self.eps = float(eps)
        classifier = model.classifier if isinstance(model, GanmexModel) else model
        meta = classifier if isinstance(classifier, Classifier) else None
        source = meta.model if meta is not None else classifier
        if not isinstance(source, nn.Module):
            raise InputError(f"model: expected a torch.nn.Module, xaisdk Classifier or GanmexModel, got {type(model).__name__}")
        self.input_shape = model_input_shape(input_shape, meta)
        self.value_range = model_value_range(value_range, meta)
        self.module = _device_copy(source, self.device)
        self._step_forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(self.module) if compile else self.module
        self.num_classes = meta.num_classes if meta is not None else self._probe_num_classes()
        self.deeplift_unavailable = deeplift_refusal(self.module)  # the same rule table as the ONNX builder
        self.supports_deeplift = self.deeplift_unavailable is None
        generator_module = model_generator(generator, model, self.input_shape) if not isinstance(generator, nn.Module) else (
            _checked_generator(generator, self.input_shape))
        self._generator = None if generator_module is None else _device_copy(generator_module, self.device)
        self.has_generator = self._generator is not None
        self.kernels = _kernel_choice()
        """Who runs the fused-IG fill/accumulate steps: ``"xaisdk._ext_cuda"`` or ``"torch"`` (the fallback)."""
        self._lock = threading.RLock()
        self._steps: OrderedDict[int, _GradientStep] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"TorchCudaBackend({type(self.module).__name__}, device={self.device}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, cuda_graph={self.cuda_graph}, kernels={self.kernels!r})"
        )

    # --- argument handling ------------------------------------------------------------------------

    def _probe_num_classes(self) -> int:
        with torch.no_grad():
            out = self.module(torch.zeros(1, *self.input_shape, device=self.device))
        if out.ndim != 2:
            raise InputError(f"model: expected logits of shape (N, classes), got {tuple(out.shape)} for one input")
        return int(out.shape[1])

    def _images(self, x: np.ndarray, name: str = "x") -> np.ndarray:
        array = as_float32(x, name)
        if array.ndim != len(self.input_shape) + 1 or array.shape[1:] != self.input_shape:
            raise InputError(f"{name}: expected shape (N, {', '.join(map(str, self.input_shape))}), got {array.shape}")
        return array

    def _weights(self, weights: np.ndarray, n: int) -> np.ndarray:
        array = as_float32(weights, "weights")
        if array.shape != (n, self.num_classes):
            raise InputError(f"weights: expected shape ({n}, {self.num_classes}), got {array.shape}")
        return array

    def _put(self, array: np.ndarray) -> torch.Tensor:
        array = np.ascontiguousarray(array)
        return torch.from_numpy(array if array.flags.writeable else array.copy()).to(self.device)  # torch wants writable memory

    # --- the Backend protocol ---------------------------------------------------------------------

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(N, num_classes)`` of ``x`` ``(N, C, H, W)``, computed on the GPU."""
        xs = self._images(x)
        out = np.empty((len(xs), self.num_classes), np.float32)
        with self._lock, torch.no_grad():
            for sl in chunks(len(xs), self.chunk_size):
                out[sl] = _host(self.module(self._put(xs[sl])))
        return out

    def score_gradient(self, x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``sum_k weights[n, k] * logits[n, k]`` ``(N,)`` and their input gradients ``(N, C, H, W)``."""
        xs = self._images(x)
        w = self._weights(weights, len(xs))
        scores, grads = np.empty(len(xs), np.float32), np.empty(xs.shape, np.float32)
        with self._lock:
            for sl in chunks(len(xs), self.chunk_size):
                score, grad = weighted_gradient(self.module, self._put(xs[sl]), self._put(w[sl]))
                scores[sl], grads[sl] = _host(score), _host(grad)
        return scores, grads

    def deeplift_multipliers(self, x: np.ndarray, baseline: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Rescale-rule multipliers ``(N, C, H, W)``: ``(x - baseline) * m`` are the DeepLIFT attributions."""
        if self.deeplift_unavailable is not None:  # the module is this backend's own copy: it cannot change
            raise unsupported_error(self.deeplift_unavailable)
        xs, bs = self._images(x), self._images(baseline, "baseline")
        if bs.shape != xs.shape:
            raise InputError(f"baseline: expected the shape of x {xs.shape}, got {bs.shape}")
        w = self._weights(weights, len(xs))
        out = np.empty(xs.shape, np.float32)
        with self._lock:  # the hooks live on the shared module
            for sl in chunks(len(xs), max(1, self.chunk_size // 2)):  # x and baseline go through together
                m = rescale_multipliers(self.module, self._put(xs[sl]), self._put(bs[sl]), self._put(w[sl]), self.eps)
                out[sl] = _host(m)
        return out

    def generate(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The GANMEX generator's image of each ``x[n]`` moved into class ``target[n]`` (float32, like ``x``)."""
        if self._generator is None:
            raise InputError("this backend has no GANMEX generator: pass a GanmexModel as the model, or generator=")
        xs = self._images(x)
        targets = np.asarray(target)
        if targets.ndim == 0:
            targets = np.full(len(xs), targets)
        if targets.shape != (len(xs),) or not np.issubdtype(targets.dtype, np.integer):
            raise InputError(f"target: expected one integer class or {len(xs)} of them, got {targets.dtype} {targets.shape}")
        out = np.empty(xs.shape, np.float32)
        with self._lock, torch.no_grad():
            for sl in chunks(len(xs), self.chunk_size):
                out[sl] = _host(self._generator(self._put(xs[sl]), self._put(targets[sl].astype(np.int64))))
        return out

    # --- the fused Integrated Gradients loop ------------------------------------------------------

    def fused_integrated_gradients(
        self, x: np.ndarray, baseline: np.ndarray, weights: np.ndarray, alphas: np.ndarray, quadrature: np.ndarray
    ) -> np.ndarray:
        """Integrated Gradients of the weighted score, the whole loop on the GPU.

        Returns ``(x - b) * sum_s quadrature[s] * dScore/dx(b + alphas[s] (x - b))`` as float32
        ``(N, C, H, W)``, where ``Score_n = sum_k weights[n, k] logits[n, k]``. ``x``: (N, C, H, W);
        ``baseline``: the shape of ``x`` or one that broadcasts to it; ``weights``: (N, num_classes);
        ``alphas``, ``quadrature``: (S,) path points and their weights (see
        :func:`~xaisdk.methods.quadrature.path_rule`). The (sample, step) rows are numbered
        ``n * S + s`` and processed ``min(chunk_size, N * S)`` at a time; each sample's rows are added
        in increasing order, so the result does not depend on the chunking. On a GPU::

            alphas, quad = path_rule("riemann_middle", 200)
            attr = backend.fused_integrated_gradients(x, baseline, class_weights(src, tgt, 10), alphas, quad)
        """
        xs = self._images(x)
        if len(xs) == 0:
            raise InputError("x: the batch is empty")
        try:
            base = np.ascontiguousarray(np.broadcast_to(as_float32(baseline, "baseline"), xs.shape))
        except ValueError:
            raise InputError(f"baseline: expected the shape of x {xs.shape} (or one that broadcasts to it)") from None
        w = self._weights(weights, len(xs))
        alphas, quadrature = as_float32(alphas, "alphas"), as_float32(quadrature, "quadrature")
        if alphas.ndim != 1 or alphas.shape != quadrature.shape or alphas.size == 0:
            raise InputError(f"alphas, quadrature: expected two 1-D arrays of equal length >= 1, got {alphas.shape} and "
                             f"{quadrature.shape}")
        n, steps, features = len(xs), alphas.size, math.prod(self.input_shape)
        total = n * steps
        rows = min(self.chunk_size, total)
        with self._lock, torch.cuda.device(self.device):
            xd, bd = self._put(xs).view(n, features), self._put(base).view(n, features)
            wd, ad, qd = self._put(w), self._put(alphas), self._put(quadrature)
            acc = torch.zeros(n, features, device=self.device)
            step = self._gradient_step(rows)
            flat_inputs = step.x.view(rows, features)
            for start in range(0, total, rows):
                k = min(rows, total - start)
                self._fill(xd, bd, ad, start, flat_inputs[:k])
                sample = torch.arange(start, start + k, device=self.device) // steps
                torch.index_select(wd, 0, sample, out=step.w[:k])
                grads = step.run(k)
                self._accumulate(grads[:k], qd, start, acc)
            self._finalize(acc, xd, bd)
            return _host(acc).reshape(xs.shape)

    def _gradient_step(self, rows: int) -> _GradientStep:
        step = self._steps.get(rows)
        if step is None:
            step = _GradientStep(self._step_forward, rows, self.input_shape, self.num_classes, self.device, self.cuda_graph)
            self._steps[rows] = step
            while len(self._steps) > _MAX_GRAPHS:
                self._steps.popitem(last=False)
        self._steps.move_to_end(rows)
        return step

    def _fill(self, xd: torch.Tensor, bd: torch.Tensor, ad: torch.Tensor, start: int, out: torch.Tensor) -> None:
        if self.kernels == "xaisdk._ext_cuda":
            cuda_kernels.ig_fill_chunk(xd, bd, ad, start, out)
            return
        flat = torch.arange(start, start + len(out), device=self.device)
        sample = flat // ad.numel()
        b = bd[sample]
        # Three separate ops round like the kernel's __fsub_rn / __fmul_rn / __fadd_rn.
        out.copy_(b + ad[flat - sample * ad.numel()].unsqueeze(1) * (xd[sample] - b))

    def _accumulate(self, grads: torch.Tensor, qd: torch.Tensor, start: int, acc: torch.Tensor) -> None:
        if self.kernels == "xaisdk._ext_cuda":
            cuda_kernels.ig_accumulate_chunk(grads, qd, start, acc)
            return
        # The chunk's rows laid out on a (samples, S) grid (zeros outside the chunk), summed over the steps.
        steps, k = qd.numel(), len(grads)
        first, last = start // steps, (start + k - 1) // steps
        grid = torch.zeros((last - first + 1) * steps, grads.shape[1], device=self.device)
        offset = start - first * steps
        grid[offset:offset + k] = grads
        acc[first:last + 1] += (grid.view(last - first + 1, steps, -1) * qd.view(1, steps, 1)).sum(dim=1)

    def _finalize(self, acc: torch.Tensor, xd: torch.Tensor, bd: torch.Tensor) -> None:
        if self.kernels == "xaisdk._ext_cuda":
            cuda_kernels.ig_finalize(acc, xd, bd)
        else:
            acc.mul_(xd - bd)


class _GradientStep:
    """The gradient of ``sum(w * model(x))`` w.r.t. ``x`` for static buffers ``x`` (rows, C, H, W) and ``w``
    (rows, classes), eager or captured as a CUDA graph."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], rows: int, input_shape: tuple[int, ...],
                 num_classes: int, device: torch.device, use_graph: bool) -> None:
        self.forward = forward
        self.rows = rows
        self.x = torch.zeros(rows, *input_shape, device=device)
        self.w = torch.zeros(rows, num_classes, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.grad: torch.Tensor | None = None
        if use_graph:
            self._capture(device)

    def _compute(self, k: int) -> torch.Tensor:
        with torch.enable_grad():
            xg = self.x[:k].detach().requires_grad_(True)
            score = (self.forward(xg) * self.w[:k]).sum()
            (grad,) = torch.autograd.grad(score, xg)
        return grad.reshape(k, -1).contiguous()

    def _capture(self, device: torch.device) -> None:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(_WARMUP_STEPS):
                self._compute(self.rows)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # Warm-up and capture on the same stream; "thread_local" keeps the capture from failing CUDA
        # calls that other threads of the process (outside this backend) make meanwhile.
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            self.grad = self._compute(self.rows)
        self.graph = graph

    def run(self, k: int) -> torch.Tensor:
        """Gradients (at least ``k`` rows, flattened to (rows, features)) for the first ``k`` rows of ``x``
        and ``w``; a graph always computes all rows (those past ``k`` hold stale inputs and are ignored)."""
        if self.graph is None:
            return self._compute(k)
        self.graph.replay()
        assert self.grad is not None
        return self.grad


def _cuda_device(device: str | torch.device) -> torch.device:
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none (a CPU-only build)"
        raise InputError(f"TorchCudaBackend needs a CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__}, "
                         f"CUDA {build}); use TorchBackend on the CPU")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device: expected a CUDA device such as 'cuda' or 'cuda:0', got {device!r}") from None
    if dev.type != "cuda":
        raise InputError(f"device: TorchCudaBackend runs on a CUDA device, got {dev}")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if not 0 <= index < torch.cuda.device_count():
        raise InputError(f"device: cuda:{index} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    return torch.device("cuda", index)


def _device_copy(module: nn.Module, device: torch.device) -> nn.Module:
    """A copy of ``module`` on ``device`` in eval mode, its weights excluded from autograd."""
    copied = copy.deepcopy(module).to(device).eval()
    for p in copied.parameters():
        p.requires_grad_(False)
    return copied


def _checked_generator(generator: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    config = getattr(generator, "config", None)
    if config is not None and tuple(config.input_shape) != input_shape:
        raise InputError(f"generator: makes {tuple(config.input_shape)} images, the classifier takes {input_shape}")
    return generator


_warned_no_kernels = False


def _kernel_choice() -> str:
    """``"xaisdk._ext_cuda"`` when the extension is built and its runtime sees a GPU, else ``"torch"``."""
    global _warned_no_kernels
    if cuda_kernels.available() and cuda_kernels.device_count() > 0:
        return "xaisdk._ext_cuda"
    if not _warned_no_kernels:
        _warned_no_kernels = True
        why = cuda_kernels.build_info() if cuda_kernels.available() else cuda_kernels.NOT_BUILT
        warnings.warn(f"TorchCudaBackend: the IG loop's fill/accumulate steps run as torch ops, because {why}", RuntimeWarning,
                      stacklevel=3)
    return "torch"


def _host(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32, copy=False)
