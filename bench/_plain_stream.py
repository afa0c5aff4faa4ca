"""The baselines of bench/transfer.py: grpcio streaming of a file's bytes, and nothing more.

    python bench/_plain_stream.py serve FILE CHUNK PORTFILE [--tls PKI]
    python bench/_plain_stream.py pull PORT [--tls PKI] [--sha256]

The server reads the file in chunks and yields them as raw bytes messages; the client
counts what it receives and throws it away. Without options: no TLS, no hashing, no
storage — what grpcio itself costs for the same bytes and chunk size on this machine (the
issue's baseline). ``--tls PKI`` adds the mutual TLS a connector uses (the development
PKI's certificates for participants ``gov`` and ``a``, the connector's channel options);
``--sha256`` hashes the bytes on a second thread as the consumer's connector does. Those
two show what the transport and the integrity check alone cost, below anything tds does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import queue
import resource
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector.identity.names import participant_dns_name
from connector.rpc.channel import RECEIVE_WINDOW_OPTIONS

_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
]
_SPACE, _SERVER, _CLIENT = "city", "gov", "a"  # as bench/transfer.py's space


def _tls_options() -> list[tuple[str, object]]:
    return [*_OPTIONS, *RECEIVE_WINDOW_OPTIONS]


def serve(path: Path, chunk: int, port_file: Path, pki: Path | None) -> None:
    def pull(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        with path.open("rb", buffering=0) as f:
            while block := f.read(chunk):
                yield block

    handler = grpc.method_handlers_generic_handler(
        "bench.Plain", {"Pull": grpc.unary_stream_rpc_method_handler(pull)}
    )
    if pki is None:
        server = grpc.server(futures.ThreadPoolExecutor(4), options=_OPTIONS)
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        server = grpc.server(futures.ThreadPoolExecutor(4), options=_tls_options())
        server.add_generic_rpc_handlers((handler,))
        creds = grpc.ssl_server_credentials(
            [((pki / _SERVER / "tls.key").read_bytes(), (pki / _SERVER / "tls.pem").read_bytes())],
            root_certificates=(pki / "ca.pem").read_bytes(),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    port_file.write_text(str(port))
    server.wait_for_termination()


def _channel(port: int, pki: Path | None) -> grpc.Channel:
    if pki is None:
        return grpc.insecure_channel(f"127.0.0.1:{port}", options=_OPTIONS)
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / _CLIENT / "tls.key").read_bytes(),
        certificate_chain=(pki / _CLIENT / "tls.pem").read_bytes(),
    )
    name = participant_dns_name(_SPACE, _SERVER)
    options = [*_tls_options(), ("grpc.ssl_target_name_override", name)]
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options)


def pull(port: int, pki: Path | None, sha256: bool) -> None:
    call = _channel(port, pki).unary_stream("/bench.Plain/Pull")
    digest = hashlib.sha256()
    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=4)

    def hash_loop() -> None:
        while (block := pending.get()) is not None:
            digest.update(block)

    hasher = threading.Thread(target=hash_loop)
    if sha256:
        hasher.start()
    start = time.perf_counter()
    received = 0
    for block in call(b"", timeout=3600):
        received += len(block)
        if sha256:
            pending.put(block)
    if sha256:
        pending.put(None)
        hasher.join()
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"bytes": received, "seconds": seconds, "peak_rss_kib": peak_kib}))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("file", type=Path)
    s.add_argument("chunk", type=int)
    s.add_argument("port_file", type=Path)
    s.add_argument("--tls", type=Path)
    p = sub.add_parser("pull")
    p.add_argument("port", type=int)
    p.add_argument("--tls", type=Path)
    p.add_argument("--sha256", action="store_true")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.file, args.chunk, args.port_file, args.tls)
    else:
        pull(args.port, args.tls, args.sha256)


if __name__ == "__main__":
    main()
