"""Open Inference Protocol v2 over gRPC: the second transport of `..dataplane`.

`grpc_predict_v2.proto` is the KServe/Triton service definition; the `*_pb2*` modules beside it
are generated from it by `make protos` (scripts/gen_grpc.sh) and checked in. They register
`inference.*` messages in protobuf's default pool, as tritonclient's own generated modules do:
the two cannot be imported into one process (tests run the server as a child process).
"""
