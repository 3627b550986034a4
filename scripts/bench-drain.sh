#!/usr/bin/env bash
# Preemption figures (a benchmark, not a test): time from SIGUSR1 to exit with everything committed, rows lost
# on a graceful drain, and restart-to-first-batch time on --resume. Real all-MiniLM-L6-v2 on CPU, release build.
# Usage: scripts/bench-drain.sh [seconds-before-signal]   (env RANKS="plain 4" chooses the launchers)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/fetch-model.sh
cargo build --release --locked -q
bin=target/release/chatspace-mpi
wait_s=${1:-8}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 10); do cat data/sample.jsonl; done > "$work/data.jsonl"   # 4820 rows of real text
printf '%-8s %-12s %-10s %-9s %-9s %-12s %-16s\n' launch drain_s exit embedded committed rows_lost resume_first_batch_s
for launch in ${RANKS:-plain 4}; do
  out="$work/out-$launch"
  if [ "$launch" = plain ]; then run=("$bin"); else run=(mpirun -n "$launch" --oversubscribe --bind-to none "$bin"); fi
  flags=(embed --dataset "$work/data.jsonl" --model models/all-MiniLM-L6-v2 --output-root "$out" --rows-per-shard 1024 --no-progress)
  "${run[@]}" "${flags[@]}" 2> "$work/log" &
  pid=$!
  sleep "$wait_s"
  t0=$(date +%s.%N)
  kill -USR1 "$pid"
  set +e; wait "$pid"; code=$?; set -e
  t1=$(date +%s.%N)
  line=$(grep -o 'this run embedded [0-9]* rows and committed [0-9]*' "$work/log" || echo "this run embedded ? rows and committed ?")
  emb=$(echo "$line" | awk '{print $4}'); com=$(echo "$line" | awk '{print $8}')
  lost=$([ "$emb" != "?" ] && echo $((emb - com)) || echo "?")
  "${run[@]}" "${flags[@]}" --resume 2> "$work/log2"
  m=$(ls "$out"/indexes/*/*/manifest-*.json)
  first=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['runs'][-1]['first_batch_seconds'], 2))" "$m")
  "$bin" verify "$m" > /dev/null
  printf '%-8s %-12.2f %-10s %-9s %-9s %-12s %-16s\n' "$launch" "$(python3 -c "print($t1 - $t0)")" "$code" "$emb" "$com" "$lost" "$first"
done
echo "machine: $(nproc) cores, $(date -u +%Y-%m-%d); signal after ${wait_s}s; drain_s = SIGUSR1 to process exit"
