"""spot-artifacts service: FastAPI + ONNX Runtime over an exported model folder (never imports torch)."""

__version__ = "0.1.0"  # the server's, as /openapi.json and GET /v2 report it
