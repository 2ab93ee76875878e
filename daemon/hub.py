"""HTTP for model files: the hub endpoint, a HEAD that reads a file's published sha256 and size
before its body, ranged GETs, and HTTP failures put in terms a user can act on."""

from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message

from daemon import __version__
from daemon.catalog import ModelError

# The variable huggingface_hub reads: a mirror, or a fake hub in tests.
ENDPOINT_ENV = "HF_ENDPOINT"
DEFAULT_ENDPOINT = "https://huggingface.co"
TOKEN_ENV = "HF_TOKEN"
HTTP_TIMEOUT_S = 30.0
# Same-origin redirects a probe follows itself (a renamed repo answers 307 to its new name, and
# only the last hop carries the X-Linked-* headers); huggingface_hub follows these the same way.
MAX_PROBE_HOPS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class Transient(Exception):
    """A failure worth retrying: a reset, a timeout, a short body, HTTP 429 or 5xx."""


@dataclass(frozen=True)
class Probe:
    """What a HEAD told of a file before its body (None: not told)."""

    size: int | None
    sha256: str | None  # the hub's X-Linked-Etag: an LFS file's sha256


def endpoint() -> str:
    """The hub's base URL: $HF_ENDPOINT, else https://huggingface.co."""
    return os.environ.get(ENDPOINT_ENV, "").strip().rstrip("/") or DEFAULT_ENDPOINT


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def is_hub(url: str) -> bool:
    """Say whether url is on the configured hub's own origin (scheme, host and port)."""
    return _origin(url) == _origin(endpoint())


def hf_spec_url(spec: str, rest: str) -> str:
    """The resolve URL for the part of an hf: spec after the scheme: owner/repo/file[@revision]."""
    rest, sep, revision = rest.rpartition("@") if "@" in rest else (rest, "", "")
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 3 or (sep and not revision):
        raise ModelError(
            f"model spec {spec!r}: expected hf:owner/repo/path/to/file.gguf[@revision]"
        )
    owner, repo, *path = parts
    quoted = "/".join(urllib.parse.quote(p) for p in path)
    rev = urllib.parse.quote(revision or "main", safe="")
    return f"{endpoint()}/{owner}/{repo}/resolve/{rev}/{quoted}"


def probe(url: str) -> Probe:
    """HEAD url without following redirects, as huggingface_hub does: the hub's redirect to its
    CDN carries the file's sha256 (X-Linked-Etag) and size (X-Linked-Size). A host without HEAD
    tells nothing, and the GET decides."""
    current = url
    for _ in range(MAX_PROBE_HOPS):
        try:
            with _open(current, "HEAD", follow=False) as response:
                return _linked(response.headers, _int(response.headers.get("Content-Length")))
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code not in _REDIRECTS:
                # Off the hub a HEAD can be stricter than the GET (a presigned URL signs only
                # GET): let the GET speak there.
                if exc.code in (405, 501) or not is_hub(url):
                    return Probe(None, None)
                raise failure(url, exc.code, exc.reason) from exc
            found = _linked(exc.headers, None)
            location = urllib.parse.urljoin(current, exc.headers.get("Location", ""))
            if found == Probe(None, None) and _origin(location) == _origin(current):
                current = location
                continue
            if found.size is None:
                return Probe(_followed_size(location), found.sha256)
            return found
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise Transient(f"HEAD {current}: {exc}") from exc
    return Probe(None, None)


@dataclass(frozen=True)
class Body:
    """A GET's answer: the response to read, the byte its body starts at, the file's size."""

    response: http.client.HTTPResponse
    start: int  # 0 for the whole file (200), the range's first byte for a 206
    total: int | None
    ranges: bool  # the server serves ranges (a 206, or Accept-Ranges: bytes)


def get(url: str, start: int) -> Body:
    """GET url from byte start on (a Range request when start > 0), following redirects. A 416
    (the range starts past the end) asks again for the whole file."""
    headers = {"Range": f"bytes={start}-"} if start else {}
    try:
        response = _open(url, "GET", follow=True, headers=headers)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and start:
            return get(url, 0)
        raise failure(url, exc.code, exc.reason) from exc
    except http.client.InvalidURL as exc:
        raise ModelError(f"bad URL {url}: {exc}") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        # URLError covers refused connections and DNS failures; OSError resets and timeouts.
        raise Transient(str(exc)) from exc
    ranges = response.headers.get("Accept-Ranges", "").strip().lower() == "bytes"
    if response.status != 206:
        return Body(response, 0, _int(response.headers.get("Content-Length")), ranges)
    # "bytes START-END/TOTAL", TOTAL maybe "*" (RFC 9110, 14.4)
    unit, _, spec = response.headers.get("Content-Range", "").strip().partition(" ")
    span, _, total = spec.partition("/")
    first = _int(span.partition("-")[0])
    if unit.lower() != "bytes" or first is None:
        response.close()
        raise Transient(f"a 206 from {url} without a readable Content-Range")
    return Body(response, first, _int(total), True)


def failure(url: str, code: int, reason: str) -> Exception:
    """The exception for an HTTP error status: Transient for 429 and 5xx, else a ModelError."""
    if code == 429 or code >= 500:
        return Transient(f"HTTP {code} {reason}")
    what = f"download of {url} failed: HTTP {code} {reason}"
    if is_hub(url) and code in (401, 403):
        page = url.split("/resolve/", 1)[0]
        token = (
            f"check that the token in {TOKEN_ENV} has access"
            if os.environ.get(TOKEN_ENV)
            else f"set {TOKEN_ENV} to an access token of yours"
        )
        return ModelError(
            f"{what}: the repo is gated or private: accept its terms at {page} and {token}"
        )
    if is_hub(url) and code == 404:
        return ModelError(f"{what}: not found (repo, file or revision)")
    return ModelError(what)


def _followed_size(url: str) -> int | None:
    """The Content-Length a HEAD reports after redirects; None where the host will not say."""
    try:
        with _open(url, "HEAD", follow=True) as response:
            return _int(response.headers.get("Content-Length"))
    except (ModelError, urllib.error.URLError, http.client.HTTPException, OSError):
        return None


def _linked(headers: Message, size: int | None) -> Probe:
    """Read X-Linked-Size and X-Linked-Etag (a quoted sha256 for LFS files, maybe weak: W/)."""
    etag = headers.get("X-Linked-Etag", "").strip().removeprefix("W/").strip('"').lower()
    linked_size = _int(headers.get("X-Linked-Size"))
    return Probe(
        linked_size if linked_size is not None else size,
        etag if _SHA256_RE.fullmatch(etag) else None,
    )


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow http(s) redirects only, keeping HEAD a HEAD; the token goes only to the hub."""

    def redirect_request(  # type: ignore[no-untyped-def]
        self, req, fp, code, msg, headers, newurl
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise ModelError(f"{req.full_url} redirected to {newurl}: only http(s) is followed")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            # urllib (3.11) turns a redirected HEAD into a GET, which would fetch the body.
            new.method = req.get_method()
            _authorize(new)
        return new


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Hand a redirect back as an HTTPError, whose headers the probe reads."""

    def redirect_request(  # type: ignore[no-untyped-def]
        self, req, fp, code, msg, headers, newurl
    ) -> None:
        return None


def _authorize(request: urllib.request.Request) -> None:
    token = os.environ.get(TOKEN_ENV)
    if token and is_hub(request.full_url):
        # Unredirected: urllib drops it on a redirect; _Redirects adds it back on the hub only.
        request.add_unredirected_header("Authorization", f"Bearer {token}")


def _open(
    url: str, method: str, *, follow: bool, headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    request = urllib.request.Request(
        url, method=method, headers={"User-Agent": f"edgellm/{__version__}", **(headers or {})}
    )
    _authorize(request)
    # Built per request: the proxy handler reads the environment when it is made.
    opener = urllib.request.build_opener(_Redirects if follow else _NoRedirects)
    response: http.client.HTTPResponse = opener.open(request, timeout=HTTP_TIMEOUT_S)
    return response
