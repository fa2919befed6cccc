"""Builds the C++ Flagz engine (workers/engine) and its Cython wrappers.

- hexz_tasks._engine: the board (rules, encoding, random playouts).
- hexz_tasks._search: neural MCTS and the many-games self-play driver.
"""

import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

HEADERS = sorted(glob.glob("workers/engine/*.h"))
CXXFLAGS = ["-std=c++17", "-O3", "-fno-math-errno", "-Wall"]


def extension(name: str, pyx: str, sources: list[str]) -> Extension:
    return Extension(
        f"hexz_tasks.{name}",
        sources=[pyx, *sources],
        include_dirs=["workers/engine"],
        depends=HEADERS,
        language="c++",
        extra_compile_args=CXXFLAGS,
    )


setup(
    ext_modules=cythonize(
        [
            extension("_engine", "workers/_engine.pyx", ["workers/engine/board.cc"]),
            extension("_search", "workers/_search.pyx", sorted(glob.glob("workers/engine/*.cc"))),
        ],
        include_path=["workers"],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False},
    )
)
