"""spot-artifacts service: FastAPI + ONNX Runtime over an exported model folder (never imports torch)."""
