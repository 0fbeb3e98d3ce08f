"""Protocol buffers of the rlhf API (``rlhf/v1/*.proto``) and the Python code generated
from them by ``grpcio-tools`` (``python -m protos.build``)."""
