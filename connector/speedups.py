"""The optional C speedups of a delivery (``connector/_speedups.c``) and whether they are in use.

The extension is built at install where a C compiler and OpenSSL's headers are present
(``setup.py``); where they are not, the install goes on without it and every caller
takes its Python path, which gives the same bytes, more slowly (a masked SQL delivery of a
million rows: bench/README.md, sql_source.py). ``TDS_NO_SPEEDUPS=1`` turns it off (the
bench's baseline, or a suspected fault). ``tds --version`` says which is in use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

__all__ = ["csv_chunk", "csv_lines", "hmac_sha256_hex", "status"]

hmac_sha256_hex: Callable[[bytes, Sequence[object]], list[str | None] | None] | None = None
"""``_speedups.hmac_sha256_hex`` (see :meth:`connector.transfer.masking.Masker.column`), or
``None`` when the speedups are not in use."""

csv_lines: Callable[[Sequence[Sequence[object]]], bytes | None] | None = None
"""``_speedups.csv_lines`` (see ``connector.sources.delivered._csv_lines``), or ``None``."""

csv_chunk: (
    Callable[
        [Sequence[Sequence[object]], int, tuple[tuple[int, int, int], ...], bytes], bytes | None
    ]
    | None
) = None
"""``_speedups.csv_chunk`` (see ``connector.sources.delivered._Projection.csv_in_c``), or
``None``."""

status = "Python only, TDS_NO_SPEEDUPS is set"
"""Which path deliveries take, in a few words (``tds --version``)."""

if os.environ.get("TDS_NO_SPEEDUPS", "").strip() in ("", "0"):
    try:
        from connector import _speedups
    except ImportError as exc:
        if "cannot import name" in str(exc):
            status = (
                "Python only: the C speedups were not built at install (they need a C "
                "compiler and OpenSSL's headers, e.g. Debian's gcc and libssl-dev); the same "
                "bytes, more slowly"
            )
        else:  # built, but it cannot load here (OpenSSL's library gone, say)
            status = f"Python only: the C speedups cannot be loaded ({exc})"
    else:
        hmac_sha256_hex = _speedups.hmac_sha256_hex
        csv_lines = _speedups.csv_lines
        csv_chunk = _speedups.csv_chunk
        status = "C speedups: OpenSSL HMAC, CSV lines and chunks"
