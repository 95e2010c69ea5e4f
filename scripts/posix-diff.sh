#!/usr/bin/env bash
# Many more sequences of the differential test than the suite runs: random file-system calls on
# outputs/ and on a plain directory side by side (tests/posix_diff.rs). Needs root and /dev/fuse.
#
#   scripts/posix-diff.sh [SEQUENCES [FIRST_SEED]]     (default 50000 sequences from seed 1000)
#
# A differing sequence is printed with its seed; replay it, every call shown, with
#   DATUMFS_POSIX_SEED=SEED cargo test --test posix_diff -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."
export DATUMFS_POSIX_SEQUENCES="${1:-50000}" DATUMFS_POSIX_FIRST="${2:-1000}" DATUMFS_REQUIRE_FUSE=1
echo "sequences $DATUMFS_POSIX_FIRST..$((DATUMFS_POSIX_FIRST + DATUMFS_POSIX_SEQUENCES)) (5-15 ms each)" >&2
exec cargo test --locked --test posix_diff -- --nocapture
