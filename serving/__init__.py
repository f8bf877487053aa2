"""The HTTP service: a BentoML class over ONNX Runtime, and its Prometheus metrics."""
