"""Builds the C++ extension ``xaisdk._ext`` from ``csrc/`` (pybind11, OpenMP where the compiler has it).

Everything else about the package lives in pyproject.toml.
"""

import os
import sys
import tempfile
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup


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


class BuildExtWithOpenMP(build_ext):
    """pybind11's build_ext, adding -fopenmp when the compiler supports it."""

    def build_extensions(self):
        flag = "/openmp" if sys.platform == "win32" else "-fopenmp"
        has_openmp = _compiler_accepts(self.compiler, flag)
        for ext in self.extensions:
            if has_openmp:
                ext.extra_compile_args.append(flag)
                ext.extra_link_args.append(flag)
                ext.define_macros.append(("XAISDK_HAVE_OPENMP", "1"))
            if sys.platform != "win32":
                ext.extra_compile_args.append("-O3")
        super().build_extensions()


setup(
    ext_modules=[
        Pybind11Extension(
            "xaisdk._ext",
            sorted(glob("csrc/*.cpp")),
            cxx_std=17,
        )
    ],
    cmdclass={"build_ext": BuildExtWithOpenMP},
)
