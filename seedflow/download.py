"""Fetching output files: streamed to a temporary file beside the destination, checked, renamed.

The file's bytes are hashed while they stream, the length is checked against Content-Length,
the file is fsynced and only then renamed into place, so a partial file never appears under
the final name. The HTTP client passed in must carry no API token: file hosts are not the API.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import httpx

from .errors import DownloadError
from .http import describe_url, map_transport_error

__all__ = ["DOWNLOAD_TYPES", "Download", "fetch_file"]

#: Content types accepted for output files (a missing content type is accepted too).
DOWNLOAD_TYPES = ("image/", "video/", "application/octet-stream")


@dataclass(frozen=True)
class Download:
    """A file fetched completely and renamed into place."""

    path: Path
    sha256: str
    bytes: int
    content_type: str | None


async def fetch_file(http: httpx.AsyncClient, url: str, dest: Path) -> Download:
    """One attempt at fetching ``url`` into ``dest`` atomically.

    Raises :class:`DownloadError`; its ``retryable`` says whether another attempt may succeed
    (a short body or a 5xx may; an expired link, a web page or a full disk will not).
    """
    try:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(url)
    except (httpx.InvalidURL, ValueError):
        shown = url.split("?", 1)[0][:80]  # never a query string: it may carry a signature
        raise _download_error(f"not an http(s) output URL: {shown}", retryable=False) from None
    where = describe_url(parsed)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise _download_error(f"cannot write into {dest.parent}: {exc}", retryable=False) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest, size, content_type = await _stream_into(http, url, where, out)
            out.flush()
            await anyio.to_thread.run_sync(os.fsync, out.fileno())
        os.replace(tmp, dest)
    except OSError as exc:
        raise _download_error(f"cannot write {dest}: {exc}", retryable=False) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return Download(path=dest, sha256=digest, bytes=size, content_type=content_type)


async def _stream_into(
    http: httpx.AsyncClient, url: str, where: str, out: BinaryIO
) -> tuple[str, int, str | None]:
    """Stream one GET into ``out``: (sha256, bytes, content type), or a DownloadError."""
    digest = hashlib.sha256()
    size = 0
    try:
        async with http.stream("GET", url) as response:
            _check_download_answer(response, where)
            content_type = response.headers.get("content-type")
            async for chunk in response.aiter_bytes():
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            expected = response.headers.get("content-length")
            if expected is not None and expected.isdigit():
                # Content-Length counts the bytes on the wire, before any decompression.
                encoded = response.headers.get("content-encoding", "identity") != "identity"
                got = response.num_bytes_downloaded if encoded else size
                if got != int(expected):
                    raise _download_error(f"short download of {where}: {got} of {expected} bytes")
    except httpx.HTTPError as exc:
        mapped = map_transport_error(exc)
        raise _download_error(f"download of {where} failed: {mapped.message}") from exc
    return digest.hexdigest(), size, content_type


def _check_download_answer(response: httpx.Response, where: str) -> None:
    status = response.status_code
    if status in (403, 404, 410):
        raise _download_error(
            f"output file {where} is gone or its link expired (HTTP {status})",
            retryable=False,
            status_code=status,
            hint="output URLs expire; download right after the job completes, or resubmit",
        )
    if status == 429 or status >= 500:
        raise _download_error(f"file host answered HTTP {status} for {where}", status_code=status)
    if not 200 <= status < 300:
        raise _download_error(
            f"file host answered HTTP {status} for {where}", retryable=False, status_code=status
        )
    content_type = response.headers.get("content-type")
    if content_type is not None and not content_type.lower().startswith(DOWNLOAD_TYPES):
        raise _download_error(
            f"{where} is not an image or video (content type {content_type})",
            retryable=False,
            status_code=status,
        )


def _download_error(message: str, *, retryable: bool = True, **kwargs: Any) -> DownloadError:
    error = DownloadError(message, **kwargs)
    error.retryable = retryable
    return error
