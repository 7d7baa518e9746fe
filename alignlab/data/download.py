"""Download a URL into the cache, once, checked against a sha256.

    path = download(url, sha256="86c4e6aa...", cache_dir=None)

The file lands in `<cache>/downloads/<first 8 hex of sha256(url)>-<file name in the URL>`: one file
per URL, readable by a person, and two URLs ending in the same name do not collide.

1. If that file exists and its sha256 is the expected one (or none was given), it is returned as
   is: no network.
2. Otherwise the URL is streamed into a temporary file in the same directory, hashing as it goes
   (a progress bar on stderr for files over 8 MB, or of unknown size).
3. If the hash is not the expected one the temporary file is deleted and `ChecksumError` says both
   hashes; only a verified file is renamed into place (see cache.py), so the cache never holds a
   partial or wrong download.

Any URL `urllib` opens works, `file://` included (that is how the tests run offline).
"""

from __future__ import annotations

import hashlib
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from tqdm import tqdm

from alignlab.data.cache import BLOCK, atomic_path, default_cache_dir, sha256_file
from alignlab.data.errors import ChecksumError, DataError, DownloadError

PROGRESS_BYTES = 8 << 20  # show a progress bar above this size
TIMEOUT = 60  # seconds without data before giving up


def cached_path(url: str, cache_dir: str | Path | None = None) -> Path:
    """Where `download` keeps `url`."""
    name = Path(unquote(urlparse(url).path)).name or "download"
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:8]
    return default_cache_dir(cache_dir) / "downloads" / f"{key}-{name}"


def download(url: str, sha256: str | None = None, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The cached copy of `url`, downloaded first if missing or not matching `sha256`."""
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise DataError(f"{url}: sha256 must be 64 hex digits, got {sha256!r}")
    path = cached_path(url, cache_dir)
    if path.is_file() and (sha256 is None or sha256_file(path) == sha256):
        return path

    with atomic_path(path) as tmp:
        got = _fetch(url, tmp, progress, desc=path.name)
        if sha256 is not None and got != sha256:
            size = tmp.stat().st_size
            raise ChecksumError(
                f"{url}: sha256 mismatch: expected {sha256}, got {got} ({size} bytes); nothing was cached"
            )
    return path


def _fetch(url: str, out: Path, progress: bool, desc: str) -> str:
    """Stream `url` into `out`; return the sha256 of what was written."""
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response, open(out, "wb") as f:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            show = progress and (total is None or total > PROGRESS_BYTES)
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr, disable=not show)
            with bar:
                while block := response.read(BLOCK):
                    f.write(block)
                    h.update(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: download failed: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise DownloadError(f"{url}: download failed: {e.reason}") from e
    except (TimeoutError, ConnectionError) as e:
        raise DownloadError(f"{url}: download failed: {e}") from e
    except ValueError as e:  # urllib: "unknown url type"
        raise DataError(f"{url}: not a URL urllib can open: {e}") from e
    return h.hexdigest()
