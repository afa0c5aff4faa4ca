"""gRPC plumbing: server assembly, authentication interceptor, client channels, status mapping."""
