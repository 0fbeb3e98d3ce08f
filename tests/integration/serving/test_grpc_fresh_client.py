"""A client built only from protos/, in a fresh venv with nothing of this project in it."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine
PROTOS = Path(__file__).resolve().parents[3] / "protos"

CLIENT = textwrap.dedent("""
    import json, sys
    import grpc
    from rlhf.v1 import inference_pb2 as pb, inference_pb2_grpc

    stub = inference_pb2_grpc.InferenceStub(grpc.insecure_channel(sys.argv[1]))
    req = pb.GenerateRequest(prompt="Hello", sampling=pb.SamplingParameters(
        n=2, max_tokens=4, ignore_eos=True))
    unary = stub.Generate(req)
    streamed = list(stub.GenerateStream(req))
    print(json.dumps({"version": unary.policy_version, "choices": len(unary.choices),
                      "tokens": unary.usage.completion_tokens,
                      "stream_tokens": streamed[-1].usage.completion_tokens}))
""")


def test_client_generated_from_protos_in_a_fresh_venv(server, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "grpcio", "grpcio-tools"], check=True,
                   timeout=600)
    out = tmp_path / "gen"
    out.mkdir()
    protos = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.glob("rlhf/v1/*.proto"))
    subprocess.run([py, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"--python_out={out}",
                    f"--grpc_python_out={out}", *protos], check=True)
    (out / "client.py").write_text(CLIENT)
    result = subprocess.run([py, "client.py", server.grpc_target], cwd=out, check=True,
                            capture_output=True, text=True, timeout=120)
    answer = json.loads(result.stdout)
    assert answer == {"version": "base", "choices": 2, "tokens": 8, "stream_tokens": 8}
