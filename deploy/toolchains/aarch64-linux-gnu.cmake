# Cross-compiling llama.cpp for 64-bit Arm (Raspberry Pi OS 64-bit, Debian arm64) on an x86-64
# host with Debian's cross toolchain: apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu.
# Used by deploy/build-wheel.sh --cross (through CMAKE_ARGS=-DCMAKE_TOOLCHAIN_FILE=...); the CPU
# flags (-march) come from deploy/boards.sh, never from the host (GGML_NATIVE=OFF).
set(CMAKE_SYSTEM_NAME Linux)
# ggml's CPU backend picks its Arm sources and flags by this name (ggml/src/ggml-cpu/CMakeLists.txt).
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
# The target's libraries and headers (libgomp for GGML_OPENMP) live here; the build's tools
# (cmake, git, ninja) are the host's.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
