"""``xaisdk.Explainer``: the facade a service embeds.

``Explainer.load("bundle/")`` runs an exported bundle on ONNX Runtime (no torch needed);
``Explainer(model, generator=...)`` runs a torch model. Either way ``explain(x, target)`` answers
"why A and not B?" with attributions of ``S_source - S_target`` relative to a baseline (by default
the GANMEX image of ``x`` turned into the target class), and ``counterfactual(x, target)`` returns
that image. One Explainer may be shared by all threads of a worker pool.

Input conversion (see :func:`xaisdk.runtime.images.as_model_batch`): a batch (N, C, H, W) or one
image (C, H, W), channels-last (N, H, W, C) / (H, W, C), and (N, H, W) / (H, W) for one-channel
models; uint8 pixels are mapped from [0, 255] to the model's value range, float pixels must already
be in it. Results for one image come back without the batch axis. Classes may be given by index or
by name.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xaisdk.attribution.lime import lime
from xaisdk.errors import InputError
from xaisdk.limits import DEFAULT_LIMITS, Limits, check_size
from xaisdk.methods import drivers
from xaisdk.methods.adaptive_quadrature import AUTO
from xaisdk.methods.empty_maps import check_explanation
from xaisdk.methods.meaningful_perturbation import meaningful_perturbation
from xaisdk.methods.sliding_patch import sliding_patch
from xaisdk.runtime.backend import Backend, class_weights
from xaisdk.runtime.preprocessing import model_batch

__all__ = ["METHODS", "Explainer", "Explanation"]

# Method name -> (driver, how it uses a baseline: "single", "set" or None).
METHODS: dict[str, tuple[Callable[..., np.ndarray], str | None]] = {
    "ig": (drivers.integrated_gradients, "single"),
    "deeplift": (drivers.deeplift, "single"),
    "deepshap": (drivers.deepshap, "set"),
    "occlusion": (drivers.occlusion, "single"),
    "expected_gradients": (drivers.expected_gradients, None),
    "gradient": (drivers.gradient, None),
    "grad_x_input": (drivers.grad_x_input, None),
    "sliding_patch": (sliding_patch, None),
    "lime": (lime, None),
    "meaningful_perturbation": (meaningful_perturbation, None),
}
ALIASES = {"integrated_gradients": "ig", "eg": "expected_gradients", "saliency": "gradient", "sp": "sliding_patch",
           "mp": "meaningful_perturbation"}
REMOVAL = ("sliding_patch", "lime", "meaningful_perturbation")  # methods that remove pixels with a filler
COMPLETE = ("ig", "deeplift", "deepshap")  # methods whose attributions sum to S(x) - S(baseline)
# Method options bounded by a Limits field of the same name (checked before any work is done).
# Input elements per backend call when the caller names no chunk_size: 256 rows of 3x32x32, 27 of 3x224x224.
CHUNK_INPUT_ELEMENTS = 1 << 22
SIZE_OPTIONS = ("n_steps", "n_samples", "steps", "n_jitter", "n_segments", "chunk_size", "max_steps")
DEFAULT_IG_STEPS = AUTO  # the Explainer's IG refines each input to 1% completeness (see explain())


@dataclass(frozen=True)
class Explanation:
    """The result of :meth:`Explainer.explain` (arrays without the batch axis when one image was given).

    ``score`` is ``S_source - S_target`` at the input (``S_source`` for one-vs-all) and
    ``baseline_score`` the same at the baseline (the mean over baselines for DeepSHAP);
    ``convergence_delta`` is ``sum(attributions) - (score - baseline_score)`` for the methods that
    are complete (IG, DeepLIFT, DeepSHAP), else None.
    """

    method: str
    attributions: np.ndarray
    source: np.ndarray | int
    target: np.ndarray | int | None
    score: np.ndarray | float
    baseline: np.ndarray | None = None
    baseline_score: np.ndarray | float | None = None
    convergence_delta: np.ndarray | float | None = None
    baseline_name: str | None = None
    """Which baseline was used: "ganmex", "zero", "uniform", "blur", "number", "image" or "callable" (None: no baseline)."""
    n_steps: np.ndarray | int | None = None
    """IG only: path points (gradient evaluations) used per input; with ``n_steps="auto"`` each input's own count."""
    converged: np.ndarray | bool | None = None
    """IG with ``n_steps="auto"`` only: whether the input's completeness error came within ``tolerance`` of
    ``|score - baseline_score|`` before ``max_steps`` points (False: the map is returned, less accurate than asked)."""

    @property
    def relative_delta(self) -> np.ndarray | float | None:
        """``|convergence_delta| / |score - baseline_score|``: the completeness error reached, relative to the score gap."""
        if self.convergence_delta is None:
            return None
        gap = np.abs(np.asarray(self.score, np.float64) - np.asarray(self.baseline_score, np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            value = np.where(gap > 0, np.abs(np.asarray(self.convergence_delta, np.float64)) / gap, np.inf)
        return float(value) if value.ndim == 0 else value

    def to_dict(self, class_names: tuple[str, ...] | None = None) -> dict[str, Any]:
        """A JSON-serialisable dict (arrays as nested lists), with class names when given."""

        def plain(value: Any) -> Any:
            if isinstance(value, np.ndarray):
                return value.tolist()
            if isinstance(value, np.generic):
                return value.item()
            return value

        out = {key: plain(getattr(self, key)) for key in self.__dataclass_fields__}
        if class_names is not None:
            for key in ("source", "target"):
                value = getattr(self, key)
                if value is not None:
                    out[f"{key}_name"] = [class_names[int(v)] for v in np.atleast_1d(value)]
        return out


class Explainer:
    """Explain a classifier's decisions one-vs-one, on torch or on an exported bundle.

    Args:
        model: a torch module, :class:`~xaisdk.models.Classifier` or
            :class:`~xaisdk.models.GanmexModel` (runs on the torch backend), or any object
            implementing :class:`~xaisdk.runtime.backend.Backend`.
        generator: a GANMEX model or generator for ``baseline="ganmex"`` when ``model`` has none.
        class_names: names of the classes (default: from the model, else "0", "1", ...).
        explaingan: an ExplainGAN (:class:`~xaisdk.counterfactual.explaingan.ExplainGAN`,
            :class:`~xaisdk.runtime.explaingan_onnx.OnnxExplainGAN` or a checkpoint path) for
            ``counterfactual(kind="explaingan")``; it carries its own binary classifier.
        exaggeration: a Progressive Exaggeration explainer
            (:class:`~xaisdk.counterfactual.exaggeration.Exaggeration`,
            :class:`~xaisdk.runtime.exaggeration_onnx.OnnxExaggeration` or a checkpoint path) for
            ``counterfactual(kind="exaggeration")``.
        limits: caps on the size-like options of one call (``n_steps``, ``n_samples``, ``chunk_size``,
            ...; see :class:`~xaisdk.limits.Limits` for the defaults); a request above them raises
            :class:`~xaisdk.InputError`. Memory does not grow with ``n_steps`` / ``n_samples``.

    >>> import numpy as np, xaisdk
    >>> explainer = Explainer(xaisdk.load_shipped_ganmex())
    >>> x = np.zeros((28, 28), np.uint8); x[6:22, 13:15] = 255  # a vertical bar
    >>> e = explainer.explain(x, target=7, source=1, method="ig", n_steps=32)
    >>> e.attributions.shape, e.source, e.target, bool(abs(e.convergence_delta) < 0.05 * abs(e.score - e.baseline_score))
    ((1, 28, 28), 1, 7, True)
    """

    def __init__(self, model: Any, generator: Any = None, *, class_names: tuple[str, ...] | None = None,
                 inpainter: Any = None, explaingan: Any = None, exaggeration: Any = None, limits: Limits | None = None,
                 **backend_options: Any) -> None:
        if limits is not None and not isinstance(limits, Limits):
            raise InputError(f"limits: expected xaisdk.limits.Limits, got {type(limits).__name__}")
        self.limits = DEFAULT_LIMITS if limits is None else limits
        if isinstance(model, Backend) and (generator is not None or backend_options):
            raise InputError("generator= and backend options apply to torch models, not to a ready backend")
        if isinstance(model, Backend):
            self.backend = model
        else:
            from xaisdk.torch_runtime.torch_backend import as_backend  # torch models only: serving stays torch-free

            self.backend = as_backend(model, generator=generator, **backend_options)
        names = class_names or getattr(self.backend, "class_names", None) or _model_class_names(model)
        self.class_names = tuple(str(n) for n in names) if names else tuple(str(i) for i in range(self.backend.num_classes))
        if len(self.class_names) != self.backend.num_classes:
            raise InputError(f"class_names: {len(self.class_names)} names for {self.backend.num_classes} classes")
        self.inpainter = _as_inpainter(inpainter, self.backend)
        self.explaingan = _as_counterfactual(explaingan, "explaingan", self.backend)
        self.exaggeration = _as_counterfactual(exaggeration, "exaggeration", self.backend)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "auto", *, providers: list[str] | None = None,
             intra_op_threads: int | None = None, spin_wait: bool = False, row_parallel: bool = True,
             limits: Limits | None = None) -> Explainer:
        """An Explainer for an exported bundle folder (ONNX Runtime) or a ``.pt`` checkpoint (torch).

        ``backend``: ``"auto"`` (bundle folders on ONNX Runtime, checkpoints on torch),
        ``"onnxruntime"`` or ``"torch"``; on an NVIDIA GPU also ``"tensorrt"`` (a bundle's graphs as
        TensorRT engines, cached in the bundle; ``pip install 'xaisdk[tensorrt]'``) or
        ``"torch-cuda"`` (a checkpoint on the GPU, gradient steps replayed as a CUDA graph).
        ``providers``, ``intra_op_threads``, ``spin_wait`` and ``row_parallel`` (see
        :class:`~xaisdk.runtime.onnxruntime_backend.OnnxRuntimeBackend`) configure ONNX
        Runtime (default: TensorRT/CUDA when onnxruntime-gpu offers them, else CPU; all cores; on the CPU,
        calls of several rows split into one single-threaded piece per core).
        Sessions are warmed up before this returns. ``limits`` as in :class:`Explainer`.

        Example (needs an exported bundle)::

            explainer = Explainer.load("bundle/")
            explainer.explain(image, target=6).attributions
        """
        path = Path(path)
        if backend not in ("auto", "onnxruntime", "torch", "tensorrt", "torch-cuda"):
            raise InputError(f"backend: expected 'auto', 'onnxruntime', 'torch', 'tensorrt' or 'torch-cuda', got {backend!r}")
        if not path.exists():
            raise InputError(f"{path}: no such bundle folder or checkpoint")
        if path.is_dir():
            if backend in ("torch", "torch-cuda"):
                raise InputError(f"{path}: a bundle holds ONNX graphs, not torch weights; use backend='onnxruntime' "
                                 "or load the .pt checkpoint it was exported from")
            if backend == "tensorrt":
                from xaisdk.runtime.tensorrt_backend import TensorRTBackend

                return cls(TensorRTBackend(path), limits=limits)
            from xaisdk.runtime.onnxruntime_backend import OnnxRuntimeBackend

            runtime = OnnxRuntimeBackend(path, providers=providers, intra_op_threads=intra_op_threads, spin_wait=spin_wait,
                                         row_parallel=row_parallel)
            inpainter = explaingan = exaggeration = None
            graphs = runtime.bundle.graphs
            if "inpainter" in graphs:
                from xaisdk.runtime.onnx_inpainter import OnnxInpainter

                inpainter = OnnxInpainter(runtime.bundle, providers=providers)
            if "explaingan" in graphs:
                from xaisdk.runtime.explaingan_onnx import OnnxExplainGAN

                explaingan = OnnxExplainGAN(runtime.bundle, providers=providers)  # the verified bytes, not the path
            if "exaggeration" in graphs:
                from xaisdk.runtime.exaggeration_onnx import OnnxExaggeration

                exaggeration = OnnxExaggeration(runtime.bundle, runtime.logits, providers=providers)
            return cls(runtime, inpainter=inpainter, explaingan=explaingan, exaggeration=exaggeration, limits=limits)
        if backend in ("onnxruntime", "tensorrt"):
            raise InputError(f"{path}: the {backend} backend runs bundles; make one with `xaisdk export --model {path}`")
        from xaisdk.models.ganmex import load_model

        if backend == "torch-cuda":
            from xaisdk.torch_runtime.torch_cuda_backend import TorchCudaBackend

            return cls(TorchCudaBackend(load_model(path)), limits=limits)
        return cls(load_model(path), limits=limits)

    # ---- inputs -------------------------------------------------------------------------
    def _batch(self, x: Any, name: str = "x") -> tuple[np.ndarray, bool]:
        try:
            return model_batch(x, self.backend)
        except InputError as err:
            message = str(err)
            if name != "x" and message.startswith("x: "):  # as_model_batch names its argument x
                message = message[len("x: "):]
            raise InputError(message if message.startswith(name) else f"{name}: {message}") from None

    def _classes(self, value: Any, n: int, name: str) -> np.ndarray:
        values = np.atleast_1d(np.asarray(value, dtype=object))
        if values.ndim != 1 or len(values) not in (1, n):
            raise InputError(f"{name}: expected one class or one per image ({n}), got {np.shape(value)}")
        out = np.empty(len(values), np.int64)
        for i, item in enumerate(values):
            if isinstance(item, str):
                if item not in self.class_names:
                    raise InputError(f"{name}: unknown class name {item!r}; classes: {', '.join(self.class_names)}")
                out[i] = self.class_names.index(item)
            elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                if not 0 <= int(item) < len(self.class_names):
                    raise InputError(f"{name}: class index {int(item)} out of range [0, {len(self.class_names)})")
                out[i] = int(item)
            else:
                raise InputError(f"{name}: classes are integer indices or class names, got {type(item).__name__}")
        return np.repeat(out, n) if len(out) == 1 else out

    def _baseline(self, baseline: Any, x: np.ndarray, target: np.ndarray | None) -> np.ndarray:
        if isinstance(baseline, str):
            if baseline == "ganmex":
                if target is None:
                    raise InputError("baseline='ganmex' needs a target class (the generator makes an image of it): give "
                                     "target=K or target='runner-up', or use baseline='zero'")
                return self.counterfactual_batch(x, target)
            if baseline == "zero":
                return np.full_like(x, 0.0)
            if baseline == "uniform":
                low, high = self.backend.value_range
                return np.random.default_rng(0).uniform(low, high, x.shape).astype(np.float32)
            if baseline == "blur":
                try:
                    from xaisdk.baselines.simple import Blur
                except ImportError:
                    raise InputError("baseline 'blur' needs scipy and torch: pip install 'xaisdk[torch]'") from None
                return Blur()(x, target)
            raise InputError(f"baseline: unknown name {baseline!r}; expected 'ganmex', 'zero', 'uniform', 'blur', "
                             "a number, an image or batch, or a callable (x, target) -> images")
        if callable(baseline):
            baseline = baseline(x, target)
        if isinstance(baseline, (int, float, np.integer, np.floating)) and not isinstance(baseline, (bool, np.bool_)):
            if not np.isfinite(float(baseline)):
                raise InputError(f"baseline: must be finite, got {baseline!r}")
            baseline = np.full(x.shape, float(baseline), np.float64)  # a number: a float image, range-checked as one
        batch, single = self._batch(baseline, "baseline")
        if single or len(batch) == 1:
            batch = np.repeat(batch, len(x), axis=0)
        if batch.shape != x.shape:
            raise InputError(f"baseline: expected one image or {len(x)} (one per input), got {len(batch)}")
        return batch

    def _baseline_set(self, baseline: Any, x: np.ndarray, target: np.ndarray | None) -> np.ndarray:
        """DeepSHAP's (N, M, C, H, W) baselines: a generated/one-per-input baseline is a set of one."""
        array = np.asarray(baseline) if isinstance(baseline, np.ndarray) else None
        if array is not None and array.ndim == x.ndim + 1:
            if array.shape[0] != len(x) or array.shape[2:] != x.shape[1:]:
                raise InputError(f"baseline: a per-input set must be (N, M, C, H, W) with N = {len(x)}, got {array.shape}")
            flat, _ = self._batch(array.reshape(-1, *array.shape[2:]), "baseline")
            return flat.reshape(array.shape)
        if array is not None and array.ndim == x.ndim and len(array) != len(x):
            shared, _ = self._batch(array, "baseline")  # (M, C, H, W) shared by every input
            return np.broadcast_to(shared, (len(x), *shared.shape)).copy()
        return self._baseline(baseline, x, target)[:, None]

    def _check_sizes(self, driver: Callable[..., Any], options: dict[str, Any]) -> None:
        """Refuse a size-like option above the limits before any work; lower a default chunk_size above them.

        The drivers check their options again; this also covers options whose own checks know no cap.
        """
        params = inspect.signature(driver).parameters
        with self.limits.applied():
            for option in SIZE_OPTIONS:  # options the method does not take are refused by _call, with the list
                value = options.get(option)
                if option in options and option in params and not (value is None and params[option].default is None):
                    if not (option == "n_steps" and isinstance(value, str) and value == AUTO):
                        check_size(value, option, cap="n_steps" if option == "max_steps" else None)
        default = params["chunk_size"].default if "chunk_size" in params else None
        if "chunk_size" not in options and isinstance(default, int):
            # rows per call do not change the result; a driver default of 256 rows suits 28 px digits, but
            # at 224 px one call of 256 autograd rows held every activation of DenseNet-121 (over 24 GiB)
            fitted = min(default, self.limits.chunk_size, max(1, CHUNK_INPUT_ELEMENTS // int(np.prod(self.backend.input_shape))))
            if fitted < default:
                options["chunk_size"] = fitted

    # ---- public API ---------------------------------------------------------------------
    def logits(self, x: Any) -> np.ndarray:
        """Logits (N, K) of a batch, or (K,) for one image."""
        batch, single = self._batch(x)
        out = self.backend.logits(batch)
        return out[0] if single else out

    def predict(self, x: Any) -> np.ndarray | int:
        """Predicted class indices (an int for one image); names are ``explainer.class_names[i]``."""
        labels = np.asarray(self.logits(x)).argmax(-1)
        return int(labels) if labels.ndim == 0 else labels

    def counterfactual_batch(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        if not self.backend.has_generator:
            raise InputError("no GANMEX generator: load a GANMEX checkpoint or a bundle exported from one "
                             "(or pass generator=; `xaisdk train ganmex` makes one), or use a non-generative baseline: "
                             "baseline='zero' (the black image), 'blur' or 'uniform'")
        return self.backend.generate(x, target)

    def counterfactual(self, x: Any, target: Any = None, *, kind: str = "ganmex", target_class: Any = None,
                       n_steps: int = 10) -> Any:
        """A generated counterfactual of each input (same layout rules as :meth:`explain`).

        ``kind="ganmex"`` (default): the GANMEX image of each input turned into class ``target``, the
        closest realistic image of that class (float32 in the model's value range).
        ``kind="explaingan"``: ExplainGAN's transformation to the other class of its binary classifier,
        an :class:`~xaisdk.runtime.explaingan_onnx.ExplainGANResult` (``transformed``, ``mask``,
        ``composite``, ``source``, ``flipped_prob``). ``kind="exaggeration"``: Progressive Exaggeration's
        series of ``n_steps`` images walking the probability of ``target_class`` (the class the explainer
        was trained for; optional) from f(x) across the boundary, an
        :class:`~xaisdk.runtime.exaggeration_onnx.ExaggerationSeries` (``images`` (N, n_steps, C, H, W),
        ``outputs`` = f of each image, ``targets``). The last two need the Explainer's ``explaingan`` /
        ``exaggeration`` (a bundle exported with them has them). ``n_steps`` is an integer in
        [2, ``limits.series_steps``] (see :class:`~xaisdk.limits.Limits`).
        """
        if kind == "ganmex":
            if target is None:
                raise InputError("counterfactual: kind='ganmex' needs target (the class to turn each input into)")
            batch, single = self._batch(x)
            images = self.counterfactual_batch(batch, self._classes(target, len(batch), "target"))
            return images[0] if single else images
        if kind not in ("explaingan", "exaggeration"):
            raise InputError(f"kind: expected 'ganmex', 'explaingan' or 'exaggeration', got {kind!r}")
        engine = getattr(self, kind)
        if engine is None:
            raise InputError(f"counterfactual: no {kind} model: pass {kind}= to Explainer, or load a bundle exported "
                             f"with `xaisdk export --{kind} ...`")
        if target is not None:
            raise InputError(f"counterfactual: kind={kind!r} takes no target (ExplainGAN goes to the other class; "
                             "Progressive Exaggeration walks target_class's probability)")
        if kind == "exaggeration":
            with self.limits.applied():
                check_size(n_steps, "n_steps", cap="series_steps", minimum=2)
        batch, _ = self._batch(x)
        if kind == "explaingan":
            return engine.transform(batch)
        classes = None if target_class is None else self._classes(target_class, 1, "target_class")[0]
        with self.limits.applied():
            return engine.series(batch, n_steps, None if classes is None else int(classes))

    def explain(self, x: Any, target: Any, source: Any = None, method: str = "ig", baseline: Any = "auto",
                **method_options: Any) -> Explanation:
        """Attribute ``S_source - S_target`` (``S_source`` when ``target`` is None) for each input.

        ``source`` defaults to the predicted class; ``target="runner-up"`` picks, per image, the class
        with the highest logit other than the source (the model's closest alternative). ``method``: ``"ig"`` (default; by
        default ``n_steps="auto"``: per input, as many path points as bring the completeness error within ``tolerance=0.01``
        of ``|score - baseline_score|``, at most ``max_steps=512``, reported in ``Explanation.n_steps`` and ``converged``;
        or a fixed ``n_steps`` with a quadrature ``rule``, default ``"riemann_middle"``), ``"deeplift"``,
        ``"deepshap"`` (``baseline`` may also be a set
        (M, C, H, W) or (N, M, C, H, W)), ``"occlusion"`` (``window``, ``stride``),
        ``"expected_gradients"`` (``references=`` images, optional ``reference_labels``; no
        baseline), ``"gradient"``, ``"grad_x_input"``; the removal methods ``"sliding_patch"``
        (``"sp"``), ``"lime"`` and ``"meaningful_perturbation"`` (``"mp"``) take no baseline but a
        ``filler=`` (``"gray"``, ``"zero"``, ``"blur"``, ``"noise"``, or ``"inpaint"``: the Explainer's
        inpainter, e.g. the bundle's) and return one map per pixel (N, 1, H, W). ``baseline``: ``"auto"``
        (default: ``"ganmex"`` when the model has a GANMEX generator and a target is given, else ``"zero"``, the
        black image for pixel-space bundles), ``"ganmex"``, ``"zero"``, ``"uniform"``, ``"blur"``, a number, an image
        or one per input, or a callable ``(x, target) -> images``; ``Explanation.baseline_name`` says which was used.
        Size-like options (``n_steps``, ``n_samples``, ``steps``, ``chunk_size``,
        ...) are integers bounded by the Explainer's ``limits`` (:class:`~xaisdk.limits.Limits`).
        A number given as ``baseline`` must lie in the model's value range, as float pixels must.
        """
        name = ALIASES.get(method, method)
        if name not in METHODS:
            raise InputError(f"method: unknown {method!r}; expected one of {', '.join(METHODS)}")
        driver, baseline_use = METHODS[name]
        if name == "ig":
            method_options.setdefault("n_steps", DEFAULT_IG_STEPS)
        adaptive = name == "ig" and isinstance(method_options["n_steps"], str) and method_options["n_steps"] == AUTO
        if adaptive and "rule" in method_options:
            raise InputError(f"rule: n_steps='auto' places its own path points; rule={method_options['rule']!r} applies to "
                             "a fixed n_steps (e.g. n_steps=200)")
        self._check_sizes(driver, method_options)
        batch, single = self._batch(x)
        n = len(batch)
        wants_runner_up = isinstance(target, str) and target == RUNNER_UP and RUNNER_UP not in self.class_names
        # adaptive IG scores the input at the path's end: a separate forward pass only to pick classes
        logits = self.backend.logits(batch) if source is None or wants_runner_up or not adaptive else None
        src = logits.argmax(1).astype(np.int64) if source is None else self._classes(source, n, "source")
        if wants_runner_up:
            tgt = runner_up(logits, src)
        else:
            tgt = None if target is None else self._classes(target, n, "target")
        if tgt is not None and np.any(tgt == src):
            i = int(np.flatnonzero(tgt == src)[0])
            raise InputError(f"target equals source ({self.class_names[src[i]]!r}) for image {i}: a one-vs-one "
                             "explanation needs two different classes (leave source unset to use the prediction)")
        weights = class_weights(src, tgt, self.backend.num_classes)
        score = None if logits is None else (logits * weights).sum(1)
        args: tuple = (self.backend, batch, weights)
        base = None
        if isinstance(baseline, str) and baseline == "auto":
            generated = self.backend.has_generator and tgt is not None
            baseline = None if baseline_use is None else "ganmex" if generated else "zero"
        baseline_name = _baseline_name(baseline) if baseline_use else None
        if baseline_use is None:
            if not (baseline is None or isinstance(baseline, str) and baseline == "ganmex"):
                shown = f"an array of shape {np.shape(baseline)}" if isinstance(baseline, np.ndarray) else repr(baseline)
                raise InputError(f"method {name!r} takes no baseline (got {shown})")
            if name in REMOVAL and method_options.get("filler") == "inpaint" and "inpainter" not in method_options:
                if self.inpainter is None:
                    raise InputError(f"method {name!r} with filler='inpaint' needs an inpainter: Explainer(..., "
                                     "inpainter=...) or a bundle exported with --inpainter")
                method_options["inpainter"] = self.inpainter
            if name == "expected_gradients":
                if "references" not in method_options:
                    raise InputError("method 'expected_gradients' needs references= (images (M, C, H, W) to draw baselines "
                                     "from, e.g. training images; reference_labels= restricts them to the target class)")
                method_options.setdefault("target", tgt)
                method_options["references"], _ = self._batch(method_options["references"], "references")
        elif baseline_use == "set":
            base = self._baseline_set(baseline, batch, tgt)
            args += (base,)
        else:
            base = self._baseline(baseline, batch, tgt)
            args += (base,)
        steps = converged = baseline_score = delta = None
        with self.limits.applied():
            if adaptive:
                result = _call(drivers.integrated_gradients_adaptive, name, args, _without(method_options, "n_steps"))
                attributions, steps, converged, baseline_score = result.attributions, result.steps, result.converged, \
                    result.baseline_scores
                score = result.input_scores if score is None else score
            else:
                attributions = _call(driver, name, args, method_options)
                steps = method_options.get("n_steps") if name == "ig" else None
        check_explanation(attributions, name, batch, base)  # an all-zero or NaN map is an error, not an explanation
        if baseline_score is not None:
            delta = attributions.reshape(n, -1).sum(1) - (score - baseline_score)
        elif base is not None:
            flat = base.reshape(-1, *batch.shape[1:])
            base_scores = (self.backend.logits(flat) * np.repeat(weights, len(flat) // n, axis=0)).sum(1)
            baseline_score = base_scores.reshape(n, -1).mean(1)
            if name in COMPLETE:
                delta = attributions.reshape(n, -1).sum(1) - (score - baseline_score)
        return _squeeze(Explanation(name, attributions, src, tgt, score, base, baseline_score, delta, baseline_name, steps,
                                    converged), single)


RUNNER_UP = "runner-up"


def _baseline_name(baseline: Any) -> str:
    if isinstance(baseline, str):
        return baseline
    if callable(baseline):
        return "callable"
    if isinstance(baseline, (int, float, np.integer, np.floating)):
        return "number"
    return "image"


def runner_up(logits: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Per row, the class with the highest logit other than ``source`` (ties: the lowest index).

    >>> runner_up(np.array([[0.1, 3.0, 2.0], [5.0, 1.0, 1.0]]), np.array([1, 0])).tolist()
    [2, 1]
    """
    others = np.array(logits, dtype=np.float64, copy=True)
    others[np.arange(len(others)), source] = -np.inf
    return others.argmax(1).astype(np.int64)


def _as_inpainter(inpainter: Any, backend: Backend) -> Any:
    """``inpainter`` when it is an :class:`~xaisdk.runtime.inpainting.Inpainter` (or None); torch
    modules / checkpoints of :mod:`xaisdk.models.inpainter` are wrapped. Its image shape must be the model's."""
    from xaisdk.runtime.inpainting import Inpainter

    if inpainter is None or isinstance(inpainter, Inpainter):
        shape = getattr(inpainter, "input_shape", None)
        if shape is not None and tuple(shape) != tuple(backend.input_shape):
            raise InputError(f"inpainter: fills images {tuple(shape)}, the model takes {tuple(backend.input_shape)}")
        return inpainter
    if isinstance(inpainter, (str, os.PathLike)):
        from xaisdk.models.inpainter import load_inpainter

        return _as_inpainter(load_inpainter(inpainter), backend)
    raise InputError(f"inpainter: expected an Inpainter (LearnedInpainter, OnnxInpainter, OpenCVInpainter) or a "
                     f"checkpoint path, got {type(inpainter).__name__}")


def _as_counterfactual(engine: Any, kind: str, backend: Backend) -> Any:
    """``engine`` (None, a ready explainer, or a checkpoint path, loaded with torch) for ``counterfactual(kind=...)``."""
    if engine is None:
        return None
    if isinstance(engine, (str, os.PathLike)):
        if kind == "explaingan":
            from xaisdk.counterfactual.explaingan import ExplainGAN

            engine = ExplainGAN(engine)
        else:
            from xaisdk.counterfactual.exaggeration import Exaggeration

            engine = Exaggeration.load(engine)
    method = "transform" if kind == "explaingan" else "series"
    if not callable(getattr(engine, method, None)):
        raise InputError(f"{kind}: expected an explainer with .{method}() or a checkpoint path, got {type(engine).__name__}")
    shape = getattr(engine, "input_shape", None)
    if shape is not None and tuple(shape) != tuple(backend.input_shape):
        raise InputError(f"{kind}: works on images {tuple(shape)}, the model takes {tuple(backend.input_shape)}")
    return engine


def _call(driver: Callable[..., np.ndarray], name: str, args: tuple, options: dict[str, Any]) -> np.ndarray:
    # The explainer computes the convergence delta itself (for every baseline kind), so drivers never return it.
    accepted = [p for p in list(inspect.signature(driver).parameters)[len(args):] if p != "return_convergence_delta"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(f"method {name!r}: unknown options {unknown}; accepted: {', '.join(accepted)}")
    return driver(*args, **options)


def _without(options: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in options.items() if key != name}


def _squeeze(e: Explanation, single: bool) -> Explanation:
    if not single:
        return e

    def first(value: Any) -> Any:
        if value is None:
            return None
        item = value[0]
        return item.item() if isinstance(item, np.generic) else item

    steps = first(e.n_steps) if isinstance(e.n_steps, np.ndarray) else e.n_steps
    return Explanation(e.method, e.attributions[0], first(e.source), first(e.target), first(e.score),
                       first(e.baseline), first(e.baseline_score), first(e.convergence_delta), e.baseline_name, steps,
                       first(e.converged))


def _model_class_names(model: Any) -> tuple[str, ...] | None:
    classifier = getattr(model, "classifier", model)
    names = getattr(classifier, "class_names", None)
    return tuple(names) if names else None
