"""The KServe v2 protocol over gRPC (Triton's ``GRPCInferenceService``), beside the HTTP server, in the same process.

``messages`` reads the protocol's messages into the models the HTTP side validates
(service/kserve/messages.py) and writes the answers; ``servicer`` holds the RPCs,
their API keys, admission, metrics and status codes; ``server`` starts and drains
the grpcio server. The generated message and service modules are those that
``tritonclient[grpc]`` ships, so the wire format is exactly the one its client speaks.
"""
