#!/usr/bin/env bash
# Checkpoint benchmark (numbers, not tests), release build, no-op encoder with all-MiniLM-L6-v2 (384-dim
# float32 rows, as real output), --rows-per-shard 10. For each shard count:
#   - the run: wall time, bytes the process wrote (/proc/PID/io write_bytes: to storage; wchar: through write
#     calls) against the output's size, and per committed shard;
#   - `--resume` of the complete run: wall time and bytes read (it checks each shard's size and the last
#     footers; no shard data);
#   - a resume of the same output cut back to half its commits (log and header as after a preemption):
#     seconds from its start to its first embedded batch (the run record's first_batch_seconds).
# Then `verify` MB/s with --jobs 1 and --jobs 2 on the largest output up to 20,000 shards.
# Usage: scripts/bench-checkpoint.sh [SHARD COUNTS...]   (default: 2000 20000 200000; BIN=... another binary)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/fetch-model.sh
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q
  BIN=$PWD/target/release/chatspace-mpi
fi
model=$PWD/models/all-MiniLM-L6-v2
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(2000 20000 200000)
work=$(mktemp -d "${TMPDIR:-/var/tmp}/bench-checkpoint.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Runs a command; prints "SECONDS RCHAR WCHAR READ_BYTES WRITE_BYTES" of it and everything it ran.
counted() {
  bash -c 's=$(date +%s.%N); "$@" >/dev/null 2>"$W/last.log" || { cat "$W/last.log" >&2; exit 1; }; e=$(date +%s.%N)
    declare -A io; while read -r k v; do io[${k%:}]=$v; done < /proc/$$/io
    echo "$(echo "$e - $s" | bc) ${io[rchar]} ${io[wchar]} ${io[read_bytes]} ${io[write_bytes]}"' bash "$@"
}
export W=$work

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F), $(df -T "$work" | awk 'NR==2 {print $2}') at $work"
echo "== $($BIN --version)"
printf '%-8s %-8s %8s %10s %10s %10s %9s %9s %10s %10s %12s\n' shards rows run_s out_MB wchar_MB wbytes_MB wchar/out B/commit resume_s resume_rMB half_first_s
verify_out=""
for shards in "${counts[@]}"; do
  rows=$((shards * 10))
  data=$work/d$rows.jsonl
  python3 -c "
import json, sys
with open(sys.argv[1], 'w') as f:
    for i in range(int(sys.argv[2])):
        f.write(json.dumps({'id': i, 'text': f'row {i} of the checkpoint benchmark'}) + '\n')
" "$data" "$rows"
  out=$work/out$shards
  flags=(embed --dataset "$data" --model "$model" --output-root "$out" --encoder noop --rows-per-shard 10 --batch-size 256 --no-progress)
  read -r run_s _ wchar _ wbytes < <(counted "$BIN" "${flags[@]}")
  out_bytes=$(du -sb "$out" | cut -f1)
  read -r resume_s resume_r _ _ _ < <(counted "$BIN" "${flags[@]}" --resume)
  # Half the commits undone (as a preemption half-way leaves it), then resumed: time to the first batch.
  python3 - "$out" <<'PY'
import glob, json, os, sys
mp = glob.glob(os.path.join(sys.argv[1], "indexes/*/*/manifest-*.json"))[0]
m = json.load(open(mp))
log = os.path.join(os.path.dirname(mp), m["shard_log"])
lines = open(log, "rb").readlines()
keep = lines[: len(lines) // 2]
for l in lines[len(keep):]:
    if json.loads(l)["path"]:  # entries of skipped rows only have no file
        os.remove(os.path.normpath(os.path.join(os.path.dirname(mp), json.loads(l)["path"])))
open(log, "wb").writelines(keep)
m["status"], m["num_shards"] = "preempted", len(keep)
json.dump(m, open(mp, "w"))
PY
  counted "$BIN" "${flags[@]}" --resume >/dev/null
  half_first=$(python3 -c "
import glob, json, sys
m = json.load(open(glob.glob(sys.argv[1] + '/indexes/*/*/manifest-*.json')[0]))
print(m['runs'][-1]['first_batch_seconds'])" "$out")
  awk -v s="$shards" -v r="$rows" -v t="$run_s" -v o="$out_bytes" -v wc="$wchar" -v wb="$wbytes" -v rs="$resume_s" -v rr="$resume_r" -v h="$half_first" 'BEGIN {
    printf "%-8d %-8d %8.1f %10.1f %10.1f %10.1f %9.2f %9.0f %10.2f %10.1f %12.2f\n", s, r, t, o/1e6, wc/1e6, wb/1e6, wc/o, (wc-o)/s, rs, rr/1e6, h }'
  if [ "$shards" -le 20000 ]; then
    [ -n "$verify_out" ] && rm -rf "$verify_out"
    verify_out=$out
  else
    rm -rf "$out"
  fi
  rm -f "$data"
done
if [ -n "$verify_out" ]; then
  m=$(ls "$verify_out"/indexes/*/*/manifest-*.json)
  for jobs in 1 2; do
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    echo "verify --jobs $jobs: $($BIN verify --jobs "$jobs" "$m" 2>/dev/null | sed 's/.*; //')"
  done
fi
