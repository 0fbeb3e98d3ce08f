"""The committed generated gRPC code must match what protoc makes from protos/ now.

The comparison leaves out the generator's version stamps (``GRPC_GENERATED_VERSION``, the
protobuf gencode version): they record which grpcio-tools ran, not the contract, and a
patch release of grpcio-tools must not turn a fresh clone red. The lock pins grpcio,
grpcio-tools and protobuf together; everything else (messages, fields, services, the
serialized descriptors) must be identical.
"""

import re
from pathlib import Path

from protos.build import ROOT, generate

STAMPS = [
    (re.compile(r"^GRPC_GENERATED_VERSION = '[^']*'$", re.M), "GRPC_GENERATED_VERSION = '…'"),
    (re.compile(r"^# Protobuf Python Version: .*$", re.M), "# Protobuf Python Version: …"),
    # ValidateProtobufRuntimeVersion(Domain.PUBLIC, major, minor, patch, suffix, file)
    (re.compile(r"(_runtime_version\.Domain\.PUBLIC,)\s*\d+,\s*\d+,\s*\d+,\s*'[^']*',"),
     r"\1 …,"),
]


def contract(text: str) -> str:
    """Generated code with the generator's version stamps blanked."""
    for pattern, replacement in STAMPS:
        text = pattern.sub(replacement, text)
    return text


def test_version_stamps_are_blanked_and_nothing_else():
    # 1.85.1 and 1.85.4 stamps (the fresh-clone failure of issue 25) compare equal …
    a = "GRPC_GENERATED_VERSION = '1.85.1'\nx = 1\n"
    b = "GRPC_GENERATED_VERSION = '1.85.4'\nx = 1\n"
    assert contract(a) == contract(b)
    # … but any other difference still shows.
    assert contract(a) != contract(b.replace("x = 1", "x = 2"))
    runtime = ("_runtime_version.ValidateProtobufRuntimeVersion(\n"
               "    _runtime_version.Domain.PUBLIC,\n    7,\n    35,\n    1,\n    '',\n"
               "    'rlhf/v1/feedback.proto'\n)")
    assert contract(runtime) == contract(runtime.replace("35", "36"))
    assert contract(runtime) != contract(runtime.replace("feedback", "inference"))


def test_generated_code_is_up_to_date(tmp_path: Path):
    fresh = generate(tmp_path)
    assert fresh, "protoc generated nothing"
    for path in fresh:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run `make protos`"
        assert contract(committed.read_text()) == contract(path.read_text()), \
            f"{committed.name} is out of date with the .proto files: run `make protos`"


def _stamp(pattern: str) -> tuple[int, ...]:
    for path in sorted((ROOT / "rlhf" / "v1").glob("*_pb2*.py")):
        m = re.search(pattern, path.read_text())
        if m:
            return tuple(int(x) for x in m.groups())
    raise AssertionError(f"no stamp {pattern!r} in the generated code")


def _lower_bound(package: str) -> tuple[int, ...]:
    import tomllib

    deps = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(rf"{package}\s*>=", d))
    return tuple(int(x) for x in spec.split(">=")[1].split("."))


def test_pyproject_admits_no_runtime_older_than_the_stamps():
    # The generated modules raise at import under an older grpcio or protobuf, so
    # pyproject.toml's lower bounds must not promise them.
    assert _lower_bound("grpcio") >= _stamp(r"GRPC_GENERATED_VERSION = '(\d+)\.(\d+)\.(\d+)'")
    assert _lower_bound("protobuf") >= _stamp(r"# Protobuf Python Version: (\d+)\.(\d+)\.(\d+)")
