#!/usr/bin/env bash
# For sites without requeue: submits N jobs of slurm/embed.sbatch, each depending on the previous one
# (afterany), each resuming from the manifest; jobs that find the work complete exit 0 at once.
#   DATASET=... MODEL=... scripts/slurm-chain.sh N [sbatch options...] [-- embed flags...]
set -euo pipefail
n=${1:?usage: slurm-chain.sh N [sbatch options] [-- embed flags]}
shift
sbatch_opts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do sbatch_opts+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
script="$(cd "$(dirname "$0")/.." && pwd)/slurm/embed.sbatch"
prev=
for i in $(seq "$n"); do
  dep=()
  [ -n "$prev" ] && dep=(--dependency="afterany:$prev")
  prev=$(REQUEUE=0 sbatch --parsable --no-requeue "${dep[@]}" "${sbatch_opts[@]}" "$script" "$@")
  echo "$prev"
done
