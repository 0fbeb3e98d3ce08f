"""The committed generated gRPC code must match what protoc makes from protos/ now."""

from pathlib import Path

from protos.build import ROOT, generate


def test_generated_code_is_up_to_date(tmp_path: Path):
    fresh = generate(tmp_path)
    assert fresh, "protoc generated nothing"
    for path in fresh:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run `make protos`"
        assert committed.read_text() == path.read_text(), \
            f"{committed.name} is out of date with the .proto files: run `make protos`"
