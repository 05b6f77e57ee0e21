# Sourced by the scripts/bench-* scripts: interleaved comparisons of signet
# with a peer, and peak memory.
#
#   compare LABEL TARGET NAME CMD NAME CMD [runner CMD]
#
# runs the commands in $ROUNDS (default 4) hyperfine sessions of $RUNS
# (default 5) runs each, alternating their order from round to round so
# that load drifting during the benchmark touches both alike, then prints
# for each command the mean and minimum wall time over all runs and the
# mean user+sys CPU time, and the ratio of the first command (signet) to
# the second (the peer) for the mean and the minimum; with a "runner"
# command (the sid chroot's own start-up, which both commands pay) the
# ratios are also given without its cost. TARGET is the ratio aimed at.
# The load average is printed with it: wall times of a loaded machine say
# little, CPU times and ratios somewhat more.
#
#   peak_rss NAME CMD...    prints CMD's peak resident set (GNU time).
#
# Both need $work (a scratch directory); compare needs hyperfine and python3.

compare() {
	local label=$1 target=$2
	shift 2
	local -a names cmds
	while [ $# -gt 0 ]; do
		names+=("$1")
		cmds+=("$2")
		shift 2
	done
	local rounds=${ROUNDS:-4} runs=${RUNS:-5} r i
	local -a jsons
	local load0
	load0=$(cut -d' ' -f1-3 /proc/loadavg)
	for ((r = 0; r < rounds; r++)); do
		local -a args=()
		for ((i = 0; i < ${#names[@]}; i++)); do
			local j=$(((i + r) % ${#names[@]}))
			args+=(-n "${names[j]}" "${cmds[j]}")
		done
		hyperfine --style none --warmup 1 --runs "$runs" ${PREPARE:+--prepare "$PREPARE"} \
			--export-json "$work/cmp-$r.json" "${args[@]}" >/dev/null 2>>"$work/hyperfine.log" ||
			{ tail -3 "$work/hyperfine.log" >&2; return 1; }
		jsons+=("$work/cmp-$r.json")
	done
	python3 - "$label" "$target" "$load0 -> $(cut -d' ' -f1-3 /proc/loadavg)" "${names[0]}" "${names[1]}" "${jsons[@]}" <<'PY'
import json, sys
label, target, load, a, b = sys.argv[1:6]
runs = {}
for f in sys.argv[6:]:
    for x in json.load(open(f))["results"]:
        r = runs.setdefault(x["command"], {"t": [], "cpu": []})
        r["t"] += x["times"]
        # hyperfine 1.15 gives CPU times as means per session
        r["cpu"] += [x["user"] + x["system"]] * len(x["times"])
mean = lambda v: sum(v) / len(v)
print(f"{label} ({len(runs[a]['t'])} runs each, interleaved; load {load}):")
for name, r in runs.items():
    print(f"  {name:>22}: mean {mean(r['t'])*1000:7.1f} ms, min {min(r['t'])*1000:7.1f} ms, CPU (user+sys) {mean(r['cpu'])*1000:7.1f} ms")
sa, sb = runs[a], runs[b]
line = (f"  ratio {a}/{b}: mean {mean(sa['t'])/mean(sb['t']):.2f}, min {min(sa['t'])/min(sb['t']):.2f}, "
        f"CPU {mean(sa['cpu'])/mean(sb['cpu']):.2f}")
if "runner" in runs:
    o = runs["runner"]
    line += (f"; without the runner ({mean(o['t'])*1000:.0f} ms): mean "
             f"{(mean(sa['t'])-mean(o['t']))/(mean(sb['t'])-mean(o['t'])):.2f}, min "
             f"{(min(sa['t'])-min(o['t']))/(min(sb['t'])-min(o['t'])):.2f}")
print(line + f" (target <= {target})")
PY
}

peak_rss() {
	local name=$1
	shift
	local kib
	kib=$(/usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1)
	echo "  peak RSS $name: $kib KiB ($((kib / 1024)) MiB)"
}
