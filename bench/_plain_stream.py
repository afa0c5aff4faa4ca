"""The baseline of bench/transfer.py: plain insecure grpcio streaming of a file's bytes.

    python bench/_plain_stream.py serve FILE CHUNK PORTFILE
    python bench/_plain_stream.py pull PORT

The server reads the file in chunks and yields them as raw bytes messages; the client
counts what it receives and throws it away. No TLS, no hashing, no storage: what grpcio
itself costs for the same bytes and chunk size on this machine.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
]


def serve(path: Path, chunk: int, port_file: Path) -> None:
    def pull(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        with path.open("rb", buffering=0) as f:
            while block := f.read(chunk):
                yield block

    handler = grpc.method_handlers_generic_handler(
        "bench.Plain", {"Pull": grpc.unary_stream_rpc_method_handler(pull)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(4), options=_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_file.write_text(str(port))
    server.wait_for_termination()


def pull(port: int) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=_OPTIONS)
    call = channel.unary_stream("/bench.Plain/Pull")
    start = time.perf_counter()
    received = 0
    for block in call(b"", timeout=3600):
        received += len(block)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"bytes": received, "seconds": seconds, "peak_rss_kib": peak_kib}))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    else:
        pull(int(sys.argv[2]))
