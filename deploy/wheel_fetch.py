"""Fetch the llama-cpp-python wheels a web server's folder lists (install.sh / bootstrap.sh
--wheels URL): those of one version and platform, each checked against the .sha256 beside it,
into a new temporary folder whose path is printed for board_wheel_pick (deploy/boards.sh).
Standard library only: it runs with the device's python3 (a minimal Debian has no curl).

    python3 deploy/wheel_fetch.py URL VERSION PLATFORM      # e.g. ... 0.3.36 linux_aarch64

Exit 3, with the reason on stderr, when the page cannot be read, a wheel cannot be fetched or
does not match its checksum.
"""

from __future__ import annotations

import hashlib
import re
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

TIMEOUT_S = 600


def get(url: str) -> bytes | None:
    """The body at url; None on a 404 (no checksum published)."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


def fetch(url: str, version: str, platform: str) -> Path:
    base = url.rstrip("/") + "/"
    page = get(base)
    if page is None:
        raise OSError(f"cannot read {base}: 404")
    pattern = rf"llama_cpp_python-{re.escape(version)}\+[A-Za-z0-9.]+-py3-none-{platform}\.whl"
    names = sorted(set(re.findall(pattern, page.decode("utf-8", "replace"))))
    folder = Path(tempfile.mkdtemp(prefix="edgellm-wheels."))
    for name in names:
        data = get(base + name)
        if data is None:
            raise OSError(f"cannot fetch {base}{name}: 404")
        published = get(base + name + ".sha256")  # sha256sum's line: "<hex>  <name>"
        expected = (published or b"").split()[:1]
        if published is not None and [hashlib.sha256(data).hexdigest().encode()] != expected:
            raise ValueError(f"{name} from {base} does not match its .sha256: refused")
        (folder / name).write_bytes(data)
    if not names:
        print(
            f"{base} links to no llama_cpp_python-{version} wheel for {platform}", file=sys.stderr
        )
    return folder


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(fetch(*sys.argv[1:]))
    except (OSError, ValueError) as err:
        print(err, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
