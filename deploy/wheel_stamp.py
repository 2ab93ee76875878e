"""Mark a llama-cpp-python wheel with the board it was built for (deploy/build-wheel.sh runs this).

The wheel gets a local version label (0.3.36 -> 0.3.36+pi5: still satisfies the pin
llama-cpp-python==0.3.36, and `pip list` shows the board), the platform tag of the CPU it was
compiled for (a cross build on x86-64 comes out of pip tagged linux_x86_64; its libraries are
aarch64 ELF files, checked here), and llama_cpp/edgellm-build.json: the board, the llama.cpp
flags and, for a native build, the build machine's CPU features. The daemon's CPU probe reads
that file to say what the build needs and this CPU lacks (daemon/engine/cpufit.py).
Standard library only: it runs with the build machine's python3.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import re
import sys
import zipfile
from pathlib import Path

BUILD_INFO = "llama_cpp/edgellm-build.json"
# ELF e_machine values (the System V ABI): what the wheel's shared libraries were compiled for.
ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "armv7l"}


def local_label(board: str) -> str:
    """PEP 440 local labels take letters, digits and dots: x86-portable -> x86.portable."""
    return re.sub(r"[^A-Za-z0-9]+", ".", board).strip(".").lower()


def _record_line(name: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={digest}", str(len(data))]


def _elf_machine(data: bytes) -> str | None:
    if data[:4] != b"\x7fELF" or len(data) < 20:
        return None
    return ELF_MACHINES.get(int.from_bytes(data[18:20], "little"), f"e_machine {data[18:20].hex()}")


def stamp(wheel: Path, board: str, info: dict, plat: str | None, out: Path) -> Path:
    """Write the stamped copy of wheel into out; its path. Refuses libraries of another CPU."""
    name, version, *_, old_plat = wheel.name[: -len(".whl")].split("-")
    base = version.split("+")[0]
    new_version = f"{base}+{local_label(board)}"
    plat = plat or old_plat
    want = plat.split("_", 1)[1] if "_" in plat else plat
    old_info, new_info = f"{name}-{version}.dist-info/", f"{name}-{new_version}.dist-info/"
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as zin:
        for item in zin.infolist():
            data = zin.read(item)
            machine = _elf_machine(data)
            if machine is not None and machine != want:
                raise SystemExit(f"wheel_stamp: {item.filename} is {machine}, not {want} ({plat})")
            files[item.filename.replace(old_info, new_info, 1)] = data
    meta = files[f"{new_info}METADATA"].decode()
    files[f"{new_info}METADATA"] = re.sub(
        r"(?m)^Version: .*$", f"Version: {new_version}", meta, count=1
    ).encode()
    wheel_meta = files[f"{new_info}WHEEL"].decode()
    files[f"{new_info}WHEEL"] = re.sub(
        r"(?m)^(Tag: [^-\n]+-[^-\n]+-).*$", rf"\g<1>{plat}", wheel_meta
    ).encode()
    files[BUILD_INFO] = (json.dumps({"board": board, **info}, indent=1) + "\n").encode()
    record = f"{new_info}RECORD"
    files.pop(record, None)
    rows = [_record_line(n, d) for n, d in files.items()] + [[record, "", ""]]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    files[record] = buf.getvalue().encode()
    tags = wheel.name[: -len(".whl")].split("-")[2:-1]
    dest = out / f"{name}-{new_version}-{'-'.join(tags)}-{plat}.whl"
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        for fname, data in files.items():
            zout.writestr(fname, data)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/wheel_stamp.py", description=__doc__)
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--board", required=True)
    parser.add_argument("--cmake-args", default="")
    parser.add_argument("--plat", help="platform tag, e.g. linux_aarch64 (default: the wheel's)")
    parser.add_argument("--cpu-features", default="", help="the build CPU's (native builds)")
    parser.add_argument("--built-on", default="")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    info = {"cmake_args": args.cmake_args, "built_on": args.built_on}
    # llama.cpp's default is GGML_NATIVE=ON: the build machine's own CPU.
    if "-DGGML_NATIVE=OFF" not in args.cmake_args.split():
        info["native_cpu_features"] = sorted(set(args.cpu_features.split()))
    print(stamp(args.wheel, args.board, info, args.plat, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
