from collections.abc import Sequence

def hmac_sha256_hex(key: bytes, values: Sequence[object], /) -> list[str | None] | None: ...
def csv_lines(columns: Sequence[Sequence[object]], /) -> bytes | None: ...
def csv_chunk(
    rows: Sequence[Sequence[object]],
    width: int,
    fields: tuple[tuple[int, int, int], ...],
    key: bytes,
    /,
) -> bytes | None: ...
