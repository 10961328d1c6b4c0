#!/bin/bash
# Where a hot path's instructions go, one machine instruction at a time.
#
#   tools/hot_instructions.sh BINARY N MIN [ARGS...]
#
# Runs BINARY (a release build) under callgrind with per-instruction counts, then prints every
# machine instruction executed at least MIN times, with its count divided by N (the number of
# operations the run made), its function and its disassembly; then the total per operation by
# function. For a hit: `tools/hot_instructions.sh target/release/examples/hit_instructions
# 300000 290000 300000 all 2` (the binary's own arguments follow MIN). Counts include the
# warm-up; take differences of two runs for exact figures (BENCHMARKS.md, "Local bucket").
set -euo pipefail
bin=$1 n=$2 min=$3
shift 3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
valgrind --tool=callgrind --dump-instr=yes --compress-pos=no --compress-strings=no \
  --callgrind-out-file="$out/cg" "$bin" "$@" >/dev/null 2>&1
# Exclusive counts per instruction address (the line after a `calls=` line is the call's
# inclusive cost, not the instruction's).
awk -v min="$min" '
  /^calls=/ { skip = 1; next }
  /^0x/ { if (skip) { skip = 0; next } c[$1] += $3 }
  END { for (a in c) if (c[a] >= min) { x = a; sub("^0x", "", x); print x, c[a] } }
' "$out/cg" | sort > "$out/hot"
objdump -d --no-show-raw-insn -C "$bin" > "$out/dis"
awk -v n="$n" '
  NR == FNR { h[$1] = $2; next }
  /^[0-9a-f]+ <.*>:$/ { fn = $0; sub(/^[0-9a-f]+ /, "", fn) }
  { a = $1; sub(":", "", a); if (a in h) { printf "%7.2f %s\t%s\n", h[a] / n, fn, $0; per[fn] += h[a] / n } }
  END { print ""; for (f in per) printf "%9.1f %s\n", per[f], f | "sort -rn" }
' "$out/hot" "$out/dis"
