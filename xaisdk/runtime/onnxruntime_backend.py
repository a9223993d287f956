"""The ONNX Runtime backend: runs an exported bundle's graphs, without torch.

Execution providers are picked automatically from what the installed onnxruntime offers:
TensorRT, then CUDA (both only with the ``onnxruntime-gpu`` package), then the CPU, which is
always there. Sessions are created once, warmed up with one run of every graph, and shared by all
threads (``InferenceSession.run`` is thread-safe). Bundles exported with a fixed batch size have
their inputs padded to that size chunk by chunk; others run up to ``max_batch`` rows per call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

import numpy as np

from xaisdk.errors import InputError
from xaisdk.runtime import relu_path_core
from xaisdk.runtime.bundle import Bundle, GraphSpec, read_bundle
from xaisdk.runtime.bundle_graphs import BundleGraphs
from xaisdk.runtime.relu_path_bundle import RELU_PATH_TAIL, TAIL_INPUT, BundleOpening, prove_opening
from xaisdk.runtime.row_parallel import RowPool, row_pieces, usable_cores

__all__ = ["PREFERRED_PROVIDERS", "OnnxRuntimeBackend", "load_session", "pick_providers", "run_session"]

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


MIN_PIECE_ROWS = 2
"""Fewest rows per piece of a split call: one-row pieces of the digits CNN lost to the thread hand-off (1.40 ms
against 1.09 ms for a 2-row gradient call), two-row ones won (1.31 against 1.51 ms at 4 rows)."""

# Counterfactual graphs a bundle may carry; their own runtimes load them (xaisdk.runtime.explaingan_onnx,
# exaggeration_onnx), this backend does not.
SERVED_ELSEWHERE = ("explaingan", "exaggeration")


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise InputError("the onnxruntime backend needs onnxruntime: pip install 'xaisdk[serve]' "
                         "(or 'xaisdk[serve-gpu]' for onnxruntime-gpu)") from None
    return onnxruntime


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _ort_errors(ort) -> tuple[type[BaseException], ...]:
    """The exception types ONNX Runtime raises (Fail, InvalidProtobuf, InvalidArgument, ...)."""
    state = ort.capi.onnxruntime_pybind11_state
    found = tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))
    return (*found, RuntimeError)


def load_session(data: bytes, where: str | os.PathLike, *, providers: Sequence[str], options=None):
    """An ONNX Runtime session of the graph bytes ``data`` (already read, hashed and scanned; never a path,
    so what runs is what was checked). Any failure raises :class:`InputError` naming ``where``.

    >>> load_session(b"not a graph", "bundle/classifier.onnx", providers=["CPUExecutionProvider"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: bundle/classifier.onnx: ONNX Runtime cannot load this graph (...)
    """
    ort = _onnxruntime()
    if not isinstance(data, bytes):
        raise InputError(f"{where}: expected the graph's bytes, got {type(data).__name__}")
    try:
        return ort.InferenceSession(data, sess_options=options, providers=list(providers))
    except Exception as err:  # onnxruntime raises its own exception types (and others) for unreadable graphs
        raise InputError(f"{where}: ONNX Runtime cannot load this graph ({_first_line(err)})") from None


def run_session(session, outputs: Sequence[str] | None, feeds: dict[str, np.ndarray], where: str | os.PathLike) -> list:
    """``session.run(outputs, feeds)``; an ONNX Runtime failure raises :class:`InputError` naming ``where``."""
    try:
        return session.run(None if outputs is None else list(outputs), feeds)
    except _ort_errors(_onnxruntime()) as err:
        raise InputError(f"{where}: ONNX Runtime failed to run this graph ({_first_line(err)})") from None


def pick_providers(requested: Sequence[str] | None = None) -> list[str]:
    """The execution providers to use: ``requested`` (each must be available), or the available
    ones among TensorRT, CUDA and CPU, in that order.

    >>> pick_providers(["CPUExecutionProvider"])
    ['CPUExecutionProvider']
    """
    available = _onnxruntime().get_available_providers()
    if requested is not None:
        missing = [p for p in requested if p not in available]
        if missing:
            raise InputError(f"execution providers {missing} are not available; this onnxruntime offers {available}")
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available]


class OnnxRuntimeBackend(BundleGraphs):
    """The :class:`~xaisdk.runtime.backend.Backend` of an exported bundle, run by ONNX Runtime.

    Args:
        bundle: a bundle folder (``xaisdk export --out``) or a :class:`~xaisdk.runtime.bundle.Bundle`.
        providers: execution providers; None picks them (see :func:`pick_providers`).
        intra_op_threads: threads per operator of a multi-threaded run, and pieces of a split call (None: ONNX
            Runtime's default, all cores, for the former; the cores this process may use for the latter).
        spin_wait: let ONNX Runtime's worker threads busy-wait after each run (its default). Off
            here: between the IG loop's chunks the spinning threads take the cores that the C++
            extension and numpy need next (IG-200 on one digit, 2 cores: 47 ms with spinning,
            34 ms without; a single large gradient call is ~15% faster with it).
        max_batch: most rows per session run for bundles with a dynamic batch.
        warmup: run every graph once now, so the first request does not pay for initialisation.
        relu_path: run fixed-step IG through the bundle's relu-path split (:mod:`xaisdk.runtime.relu_path_bundle`)
            when it has one and only the CPU provider runs; False keeps the plain loop over the gradient graph.
            A split in the bundle is proven against the classifier graph either way.
        row_parallel: on the CPU provider with 2+ threads (``intra_op_threads``, default: the cores this
            process may use), a call of 4+ rows is cut into one contiguous piece per thread, each run by
            a single-threaded session of the same graph bytes (:mod:`xaisdk.runtime.row_parallel`); a
            one-row call keeps the multi-threaded session. The single-threaded session of a graph is made on
            its first split call (by :meth:`__init__`'s warm-up when ``warmup``), and holds its own copy of
            the graph's weights. False never splits.

    Example (needs an exported bundle)::

        backend = OnnxRuntimeBackend("bundle/")
        backend.logits(np.zeros((1, *backend.input_shape), np.float32)).shape
    """

    name = "onnxruntime"

    def __init__(self, bundle: Bundle | str | os.PathLike, *, providers: Sequence[str] | None = None,
                 intra_op_threads: int | None = None, max_batch: int = 256, warmup: bool = True,
                 spin_wait: bool = False, relu_path: bool = True, row_parallel: bool = True) -> None:
        ort = _onnxruntime()
        self.bundle = bundle if isinstance(bundle, Bundle) else read_bundle(bundle)
        if int(max_batch) < 1:
            raise InputError(f"max_batch must be >= 1, got {max_batch}")
        if intra_op_threads is not None and int(intra_op_threads) < 0:
            raise InputError(f"intra_op_threads must be >= 0 (0: ONNX Runtime's default), got {intra_op_threads}")
        self.providers = pick_providers(providers)
        self.input_shape = self.bundle.input_shape
        self.num_classes = self.bundle.num_classes
        self.value_range = self.bundle.value_range
        self.class_names = self.bundle.class_names
        self.preprocessing = self.bundle.preprocessing
        self.rows = self.bundle.batch or int(max_batch)
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = int(intra_op_threads)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
        self._sessions = {role: self._session(spec, options) for role, spec in self.bundle.graphs.items()
                          if role not in SERVED_ELSEWHERE}
        threads = int(intra_op_threads) if intra_op_threads else usable_cores()
        self.row_threads = threads if row_parallel and self.providers == ["CPUExecutionProvider"] else 1
        self._rows_pool = RowPool(self.row_threads)
        self._single_options = ort.SessionOptions()
        self._single_options.intra_op_num_threads = self._single_options.inter_op_num_threads = 1
        self._single_sessions: dict = {}
        self._single_lock = threading.Lock()
        self._where = {role: self.bundle.path / spec.file for role, spec in self.bundle.graphs.items()}
        self.supports_deeplift = "deeplift_grad" in self._sessions
        self.deeplift_unavailable = None if self.supports_deeplift else self.bundle.deeplift_unavailable
        self.has_generator = "generator_ganmex" in self._sessions
        self._opening = self._relu_path_opening()
        self._relu_path_on = bool(relu_path)
        if warmup:
            self._warmup()

    def _session(self, spec: GraphSpec, options):
        where = self.bundle.path / spec.file
        session = load_session(spec.data, where, providers=self.providers, options=options)
        names = tuple(i.name for i in session.get_inputs()), tuple(o.name for o in session.get_outputs())
        if set(names[0]) != set(spec.inputs) or set(names[1]) != set(spec.outputs):
            raise InputError(f"{where}: graph I/O {names} differs from the manifest {(spec.inputs, spec.outputs)}")
        self._check_shapes(session, where, spec.role)
        return session

    def _relu_path_opening(self) -> BundleOpening | None:
        """The bundle's relu-path split, proven against its classifier graph on probe inputs; None when the bundle
        has none or the C++ kernels are not built. A split that is not the classifier's function raises InputError."""
        spec = self.bundle.relu_path
        if spec is None or not relu_path_core.available():
            return None

        def tail(z2: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            score, grad = self._run(RELU_PATH_TAIL, {TAIL_INPUT: z2, "w": w}, ["score", "grad"])
            return score, grad

        opening = BundleOpening(spec, tail if spec.tail == "graph" else None)
        prove_opening(opening, self.score_gradient, self.value_range, self.num_classes, str(self.bundle.path / "manifest.json"))
        return opening

    @property
    def uses_relu_path(self) -> bool:
        """Whether :meth:`fused_integrated_gradients` runs the relu-path (a split in the bundle, CPU provider only:
        its kernels are CPU code, and on a GPU the plain graphs are the faster path)."""
        return self._relu_path_on and self._opening is not None and self.providers == ["CPUExecutionProvider"]

    def fused_integrated_gradients(self, x: np.ndarray, baseline: np.ndarray, weights: np.ndarray, alphas: np.ndarray,
                                   quadrature: np.ndarray, *, checkpoint: Callable[[], None] | None = None,
                                   ) -> np.ndarray | None:
        """IG ``(x - b) * sum_s quadrature[s] dScore/dx(b + alphas[s] (x - b))`` by the relu-path
        (:func:`xaisdk.runtime.relu_path_core.path_integrated_gradients`) when :attr:`uses_relu_path`; None otherwise,
        and the driver runs its chunked loop over :meth:`score_gradient`. ``checkpoint`` is called before every
        pass of the loop (a server passes its request's deadline check)."""
        if not self.uses_relu_path:
            return None
        x, baseline = self._check(x), self._check(baseline, "baseline")
        if baseline.shape != x.shape:
            raise InputError(f"baseline: expected shape {x.shape}, got {baseline.shape}")
        return relu_path_core.path_integrated_gradients(self._opening, x, baseline, self._weights(weights, len(x)),
                                                        alphas, quadrature, checkpoint=checkpoint)

    def _check_shapes(self, session, where, role: str = "classifier") -> None:
        """Every graph input/output is float32 and shaped as the manifest's input spec, class count and
        batch imply; a graph edited (or a manifest changed) otherwise would fail on the first run."""
        rows, k = self.bundle.batch, self.num_classes
        image = (rows, *self.input_shape)
        expected = {"x": image, "baseline": image, "grad": image, "multipliers": image, "image": image,
                    "w": (rows, k), "target": (rows, k), "logits": (rows, k), "score": (rows,), "score_baseline": (rows,)}
        if role == RELU_PATH_TAIL and self.bundle.relu_path is not None:
            expected["grad"] = expected[TAIL_INPUT] = (rows, *self.bundle.relu_path.output_shape)
        for arg in [*session.get_inputs(), *session.get_outputs()]:
            want = expected.get(arg.name)
            if want is None:
                continue
            got = list(arg.shape)
            dynamic_or_equal = [not isinstance(g, int) or g == w for g, w in zip(got, want)]
            if arg.type != "tensor(float)" or len(got) != len(want) or not all(dynamic_or_equal):
                shown = ["N" if w is None else w for w in want]
                raise InputError(f"{where}: {arg.name!r} is {arg.type} {got} in the graph, but the manifest's input spec "
                                 f"and class names make it tensor(float) {shown}")

    def _warmup(self) -> None:
        split = 2 * (MIN_PIECE_ROWS if self.bundle.batch is None else self.rows)
        for rows in [1] + ([split] if self.row_threads > 1 else []):  # one row: the multi-threaded sessions; then the split ones
            x = np.full((rows, *self.input_shape), self.value_range[0], np.float32)
            w = np.zeros((rows, self.num_classes), np.float32)
            self.logits(x)
            self.score_gradient(x, w)
            if self.supports_deeplift:
                self.deeplift_multipliers(x, x, w)
            if self.has_generator:
                self.generate(x, np.zeros(rows, np.int64))

    def _row_pieces(self, total: int) -> list[range]:
        """The rows of a call of ``total`` rows, cut into one piece per thread (whole fixed-batch chunks)."""
        if self.row_threads == 1 or total < 2 * MIN_PIECE_ROWS:
            return [range(total)]
        if self.bundle.batch is None:
            return row_pieces(total, min(self.row_threads, total // MIN_PIECE_ROWS))
        chunks = row_pieces(-(-total // self.rows), self.row_threads)
        return [range(c.start * self.rows, min(c.stop * self.rows, total)) for c in chunks]

    def _single_session(self, role: str):
        with self._single_lock:
            session = self._single_sessions.get(role)
            if session is None:
                session = self._single_sessions[role] = self._session(self.bundle.graphs[role], self._single_options)
            return session

    def _run(self, role: str, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """Run ``role`` over the rows of ``feeds``: one piece per thread when the call splits (see ``row_parallel``),
        each in chunks of ``self.rows`` (padded for fixed batches)."""
        pieces = self._row_pieces(len(next(iter(feeds.values()))))
        if len(pieces) == 1:
            return self._run_rows(self._sessions[role], role, feeds, outputs)
        session = self._single_session(role)
        parts = self._rows_pool.map([
            lambda p=p: self._run_rows(session, role, {k: v[p.start:p.stop] for k, v in feeds.items()}, outputs)
            for p in pieces])
        return [np.concatenate([part[i] for part in parts]) for i in range(len(outputs))]

    def _run_rows(self, session, role: str, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        total = len(next(iter(feeds.values())))
        pieces: list[list[np.ndarray]] = [[] for _ in outputs]
        for start in range(0, total, self.rows):
            chunk = {k: np.ascontiguousarray(v[start:start + self.rows], dtype=np.float32) for k, v in feeds.items()}
            used = len(next(iter(chunk.values())))
            if self.bundle.batch is not None and used < self.rows:
                chunk = {k: np.concatenate([v, np.zeros((self.rows - used, *v.shape[1:]), np.float32)]) for k, v in chunk.items()}
            for piece, result in zip(pieces, run_session(session, outputs, chunk, self._where[role])):
                piece.append(result[:used])
        return [np.concatenate(p) if p else np.zeros((0,), np.float32) for p in pieces]
