"""Builds the C++ extension ``xaisdk._ext`` from ``csrc/`` (pybind11, OpenMP where the compiler has it) and, where
``nvcc`` exists, the CUDA extension ``xaisdk._ext_cuda`` from ``csrc/cuda/``.

nvcc is looked up as ``$CUDA_HOME/bin/nvcc`` or ``$CUDA_PATH/bin/nvcc``, else on ``PATH``; without it only
``xaisdk._ext`` is built. ``XAISDK_NO_CUDA=1`` skips the CUDA part even where nvcc exists. When nvcc exists
and a .cu file does not compile, the build fails (so CI catches a broken kernel). The CUDA runtime is linked
statically (``cudart_static``), so ``xaisdk._ext_cuda`` imports on machines without a CUDA toolkit and
reports ``device_count() == 0`` where there is no driver or GPU. Linux only for now.

Everything else about the package lives in pyproject.toml.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup
from setuptools.errors import CompileError

CUDA_EXT = "xaisdk._ext_cuda"
# Ampere (A100) and Hopper (H100/H200) machine code, plus compute_90 PTX that newer GPUs JIT-compile.
# Each extra arch adds compile time to every build where nvcc exists, so the list stays short.
CUDA_GENCODE = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
]
CUDA_ARCHS = "sm_80 sm_90 compute_90(PTX)"
NO_CUDA_HINT = "set XAISDK_NO_CUDA=1 to build without the CUDA extension"


def _compiler_accepts(compiler, flag: str) -> bool:
    """True when the C++ compiler compiles and links a trivial OpenMP file with ``flag``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as fh:
            fh.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=[flag])
        except Exception:  # any compiler/linker failure means "no OpenMP"
            return False
    return True


def _find_nvcc() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def _cudart_static_dir(nvcc: str) -> str:
    """The folder holding libcudart_static.a of the toolkit that ``nvcc`` belongs to.

    ``nvcc -dryrun`` prints the toolkit's library folders; asking nvcc handles wrapper scripts and
    symlinked installs that a path computed from nvcc's own location would get wrong.
    """
    candidates = []
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.cu")
        with open(probe, "w") as fh:
            fh.write("__global__ void probe() {}\n")
        result = subprocess.run([nvcc, "-dryrun", "-c", probe, "-o", os.path.join(tmp, "probe.o")],
                                capture_output=True, text=True)
    text = result.stdout + result.stderr
    candidates += [d for d in re.findall(r'-L"?([^"\s]+)', text) if not d.rstrip("/").endswith("stubs")]
    top = re.search(r"^#\$ TOP=(.+)$", text, re.MULTILINE)
    home = top.group(1).strip() if top else os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    candidates += [os.path.join(home, "lib64"), os.path.join(home, "lib"), *glob(os.path.join(home, "targets", "*", "lib"))]
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, "libcudart_static.a")):
            return os.path.normpath(folder)
    raise CompileError(f"found nvcc at {nvcc} but no libcudart_static.a next to it (looked in {candidates}); {NO_CUDA_HINT}")


class BuildExtWithOpenMP(build_ext):
    """pybind11's build_ext, adding -fopenmp when the compiler supports it, and compiling the .cu
    sources of the CUDA extension with nvcc."""

    def build_extensions(self):
        flag = "/openmp" if sys.platform == "win32" else "-fopenmp"
        has_openmp = _compiler_accepts(self.compiler, flag)
        for ext in self.extensions:
            if ext.name == CUDA_EXT:
                continue  # host code of the CUDA module has no OpenMP loops
            if has_openmp:
                ext.extra_compile_args.append(flag)
                ext.extra_link_args.append(flag)
                ext.define_macros.append(("XAISDK_HAVE_OPENMP", "1"))
            if sys.platform != "win32":
                ext.extra_compile_args.append("-O3")
        super().build_extensions()

    def build_extension(self, ext):
        if ext.name == CUDA_EXT:
            self._compile_cuda(ext)
        super().build_extension(ext)

    def _compile_cuda(self, ext):
        nvcc = ext.nvcc
        ext.library_dirs.append(_cudart_static_dir(nvcc))
        out_dir = os.path.join(self.build_temp, "cuda")
        os.makedirs(out_dir, exist_ok=True)
        headers = sorted(glob("csrc/cuda/*.h") + glob("csrc/cuda/*.cuh"))
        jobs = []
        for src in ext.cuda_sources:
            obj = os.path.join(out_dir, os.path.splitext(os.path.basename(src))[0] + ".o")
            if obj not in ext.extra_objects:
                ext.extra_objects.append(obj)
            newest = max(os.path.getmtime(p) for p in [src, *headers])
            if self.force or not os.path.exists(obj) or os.path.getmtime(obj) < newest:
                jobs.append((src, obj))
        cmd = [nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden", *CUDA_GENCODE, "-c"]

        def run(job):
            src, obj = job
            print(f"nvcc: compiling {src}", file=sys.stderr)
            return src, subprocess.run([*cmd, src, "-o", obj], capture_output=True, text=True)

        with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
            results = list(pool.map(run, jobs))
        for src, result in results:
            if result.stdout or result.stderr:
                print(result.stdout + result.stderr, file=sys.stderr)
            if result.returncode != 0:
                raise CompileError(f"nvcc failed on {src} (exit status {result.returncode}, output above); "
                                   f"fix the CUDA source, or {NO_CUDA_HINT}")


def _cuda_extension() -> Pybind11Extension | None:
    """``xaisdk._ext_cuda`` when nvcc exists and the CUDA part is not switched off, else None (with a note)."""
    if os.environ.get("XAISDK_NO_CUDA") == "1":
        print("xaisdk: XAISDK_NO_CUDA=1, building without the CUDA extension", file=sys.stderr)
        return None
    if not sys.platform.startswith("linux"):
        print(f"xaisdk: the CUDA extension is built on Linux only, not on {sys.platform}", file=sys.stderr)
        return None
    nvcc = _find_nvcc()
    if nvcc is None:
        print("xaisdk: nvcc not found (CUDA_HOME, CUDA_PATH, PATH); building without the CUDA extension", file=sys.stderr)
        return None
    cuda_sources = sorted(glob("csrc/cuda/*.cu"))
    ext = Pybind11Extension(
        CUDA_EXT,
        ["csrc/cuda/module_cuda.cpp"],
        cxx_std=17,
        define_macros=[("XAISDK_CUDA_ARCHS", f'"{CUDA_ARCHS}"')],
        libraries=["cudart_static", "dl", "rt", "pthread"],
        # The static runtime's symbols stay private to the module, so another CUDA runtime in the
        # process (torch's libcudart.so) cannot interpose on them, nor they on it.
        extra_link_args=["-Wl,--exclude-libs,libcudart_static.a"],
        extra_compile_args=["-O3"],
        depends=[*cuda_sources, *sorted(glob("csrc/cuda/*.h") + glob("csrc/cuda/*.cuh"))],
    )
    ext.nvcc = nvcc
    ext.cuda_sources = cuda_sources
    return ext


extensions = [
    Pybind11Extension(
        "xaisdk._ext",
        sorted(glob("csrc/*.cpp")),
        cxx_std=17,
    )
]
cuda_extension = _cuda_extension()
if cuda_extension is not None:
    extensions.append(cuda_extension)

setup(
    ext_modules=extensions,
    cmdclass={"build_ext": BuildExtWithOpenMP},
)
