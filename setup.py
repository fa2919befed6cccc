"""Builds the C++ Flagz engine (workers/engine) and its Cython wrappers.

- hexz_tasks._engine: the board (rules, encoding, random playouts).
- hexz_tasks._search: neural MCTS and the many-games self-play driver.
- hexz_tasks._uct: the game server's CPU player (plain UCT, random rollouts).
"""

import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

HEADERS = sorted(glob.glob("workers/engine/*.h"))
UCT_SOURCES = ["workers/engine/board.cc", "workers/engine/uct.cc"]
SEARCH_SOURCES = sorted(set(glob.glob("workers/engine/*.cc")) - {"workers/engine/uct.cc"})
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
            extension("_search", "workers/_search.pyx", SEARCH_SOURCES),
            extension("_uct", "workers/_uct.pyx", UCT_SOURCES),
        ],
        include_path=["workers"],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False},
    )
)
