"""Build llama.cpp's own `llama-server` and `llama-bench` from the source that the installed
llama-cpp-python's sdist vendors, so the peers are measured on the very same kernels.

Built on demand into a cache folder (never committed): `$XDG_CACHE_HOME/edgellm/llamacpp-<ver>`.
The build flags are those pip used for the installed package: llama-cpp-python's CMake
defaults (GGML_NATIVE on) plus whatever CMAKE_ARGS says now (set it as you did for pip).
About 6 minutes on 2 cores the first time; later calls return the cached binaries at once.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

TARGETS = ("llama-server", "llama-bench")


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgellm" / f"llamacpp-{metadata.version('llama_cpp_python')}"


def binaries() -> dict[str, Path]:
    """The built peers, building them first if the cache lacks one."""
    root = cache_dir()
    found = {name: root / "build" / "bin" / name for name in TARGETS}
    if all(p.exists() for p in found.values()):
        return found
    source = _vendored_source(root)
    flags = shlex.split(os.environ.get("CMAKE_ARGS", ""))
    build = root / "build"
    _run(
        [
            "cmake",
            "-S",
            str(source),
            "-B",
            str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            *flags,
        ]
    )
    _run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", *TARGETS])
    return found


def _vendored_source(root: Path) -> Path:
    """vendor/llama.cpp of the sdist of the installed version (pip download, no deps)."""
    version = metadata.version("llama_cpp_python")
    source = root / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if source.exists():
        return source
    root.mkdir(parents=True, exist_ok=True)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-binary",
            ":all:",
            "--no-deps",
            "-d",
            str(root),
            f"llama-cpp-python=={version}",
        ]
    )
    sdist = next(root.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(root, filter="data")
    return source


def _run(cmd: list[str]) -> None:
    print("+", shlex.join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    for name, path in binaries().items():
        print(name, path)
