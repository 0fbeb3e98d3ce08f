"""The gRPC API: servicers that only convert protobuf ↔ handler types (see protos/)."""
