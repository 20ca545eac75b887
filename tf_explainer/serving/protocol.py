"""Names and limits that TF Serving's API fixes, shared by the clients and the contract double."""

DEFAULT_SIGNATURE = "serving_default"
SIGNATURE_DEF_FIELD = "signature_def"  # the one GetModelMetadata field TF Serving supports
DEFAULT_REST_PORT = 8501
DEFAULT_GRPC_PORT = 8500
# TF Serving lifts gRPC's 4 MiB message limit; clients must too, for large batches of part maps.
GRPC_OPTIONS = [("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_receive_message_length", 2**31 - 1)]
# The contract double refuses larger REST bodies with 413 (tools/serve.py --max_request_body_bytes):
# room for a batch of 32 images at 224 x 224 as JSON numbers, or of large JPEGs as base64.
DEFAULT_MAX_REQUEST_BODY_BYTES = 64 * 2**20
