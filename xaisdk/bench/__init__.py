"""``xaisdk bench``: every available implementation of the hot paths timed in one run, on the same
model, inputs, baselines and settings, against a peer (Captum, a plain per-step loop, plain BLAS).

Suites: ``ig`` (IG-200 latency and throughput), ``occlusion`` (Occlusion-1), ``aopc`` (AOPC_all
curve), ``mdts`` (nearest target-class search at MNIST scale), ``floor`` (FLOPs of the IG passes vs
the measured times), ``tolerance`` (time to a 1% completeness error: adaptive IG vs Captum's best
fixed rule on the digits CNN, a CifarCNN and ResNet-18 at 224 px; :mod:`xaisdk.bench.tolerance`),
``bundle`` (IG on the exported bundle with ONNX Runtime vs torch, every layout of the 224-px zoo;
:mod:`xaisdk.bench.bundle_speed`).
Results go to ``<out>/<name>.json`` with device, versions, date and command, plus a markdown table
and a PNG chart. Needs torch and Captum (``pip install 'xaisdk[dev]'``).
"""

from __future__ import annotations

from xaisdk.errors import InputError

__all__ = ["SUITES", "default_name", "run_bench"]

SUITES = ("ig", "occlusion", "aopc", "mdts", "floor", "tolerance", "bundle")


def run_bench(suites: tuple[str, ...] = SUITES, *, quick: bool = False, n_images: int = 16, repeats: int = 3,
              batch: int = 64, command: str | None = None, progress: bool = True) -> dict:
    """Run the chosen suites and return the result (see the module docstring); ``quick`` shrinks every
    suite (fewer images and repeats, MDTS at 1/10 of the queries) for a smoke run.

    >>> run_bench(("nope",))
    Traceback (most recent call last):
    ...
    xaisdk.errors.InputError: suites: unknown 'nope'; choose from ig, occlusion, aopc, mdts, floor, tolerance, bundle
    """
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise InputError(f"suites: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(SUITES)}")
    for name, value in (("n_images", n_images), ("repeats", repeats), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name}: expected a positive integer, got {value!r}")
    import importlib.util

    for package, needed_by in (("torch", ("ig", "occlusion", "aopc", "floor", "tolerance", "bundle")),
                               ("captum", ("ig", "occlusion", "floor", "tolerance")),
                               ("onnxruntime", ("ig", "occlusion", "aopc", "floor", "tolerance", "bundle"))):
        users = [s for s in suites if s in needed_by]
        if users and importlib.util.find_spec(package) is None:
            raise InputError(f"suites {', '.join(users)} compare against {package}, which is not installed: "
                             f"pip install 'xaisdk[dev]' (or run --suites mdts)")
    from xaisdk.bench.environment import describe_environment
    from xaisdk.bench.workload import Workload

    if quick:
        n_images, repeats, batch = min(n_images, 4), 1, min(batch, 8)
    work = Workload(n_images=max(n_images, batch))
    result = {**describe_environment(command), "quick": quick, "suites": {}}
    done = result["suites"]
    if "ig" in suites or "floor" in suites:
        from xaisdk.bench.ig import ig_suite

        ig = ig_suite(work, repeats=repeats, batch=batch, progress=progress)
        if "ig" in suites:
            done["ig"] = ig
    if "occlusion" in suites:
        from xaisdk.bench.removal import occlusion_suite

        done["occlusion"] = occlusion_suite(work, repeats=repeats, progress=progress)
    if "aopc" in suites:
        from xaisdk.bench.removal import aopc_suite

        done["aopc"] = aopc_suite(work, repeats=repeats, progress=progress)
    if "mdts" in suites:
        from xaisdk.bench.mdts import mdts_suite

        done["mdts"] = mdts_suite(queries=1000 if quick else 10000, repeats=1, progress=progress)
    if "tolerance" in suites:
        from xaisdk.bench.tolerance import tolerance_suite

        done["tolerance"] = tolerance_suite(quick=quick, progress=progress)
    if "bundle" in suites:
        from xaisdk.bench.bundle_speed import bundle_speed_suite

        done["bundle"] = bundle_speed_suite(quick=quick, progress=progress)
    if "floor" in suites:
        from xaisdk.bench.floor import ig_floor

        measured = {name: row["p50_ms"] for name, row in ig["rows"].items() if "cuda" not in name}
        done["floor"] = {"what": f"FLOPs of {work.steps} forward + input-gradient passes of the digits CNN vs measured IG time",
                         **ig_floor(work.module, (1, 28, 28), work.steps, measured)}
    return result


def default_name(result: dict) -> str:
    """``hot_path_<cpu|gpu>_<date>`` for a results file.

    >>> default_name({"device": {"gpu": None}, "date": "2026-12-01T19:00:00+00:00"})
    'hot_path_cpu_2026-12-01'
    """
    kind = "gpu" if result["device"].get("gpu") else "cpu"
    return f"hot_path_{kind}_{result['date'][:10]}"
