#!/usr/bin/env bash
# A real embedding job end to end: the bundled sample (data/sample.jsonl, 482 rows of real text) with the
# real all-MiniLM-L6-v2 weights, under mpirun with 4 ranks (controller, loader, encoder, writer).
# Output: out/demo (Parquet shards + manifest). Extra arguments go to `chatspace-mpi embed`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup-debian.sh
source scripts/env.sh
scripts/fetch-model.sh --no-mpnet
cargo build --release --locked
rm -rf out/demo
mpirun -n "${RANKS:-4}" --oversubscribe --bind-to none target/release/chatspace-mpi embed \
  --dataset data/sample.jsonl --model models/all-MiniLM-L6-v2 --output-root out/demo --rows-per-shard 128 "$@"
echo "manifest: $(ls out/demo/indexes/*/*/manifest-*.json)"
