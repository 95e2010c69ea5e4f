#!/usr/bin/env bash
# The test command: formatting, lints, then every unit and integration test. Integration tests
# mount real FUSE filesystems (root and /dev/fuse needed; DATUMFS_REQUIRE_FUSE=1 turns a missing
# /dev/fuse into a failure) and start their own S3 server on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked "$@"
