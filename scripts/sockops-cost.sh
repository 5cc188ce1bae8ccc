#!/bin/bash
# BPF time of sock_ops per connection, server side tracked: N connect/request/close per round
# against target/release/enforcer, with kernel.bpf_stats_enabled=1. Prints sock_ops runs and ns
# per connection. BENCHMARKS.md's breakdown ran it against variant builds of
# enforcer-ebpf/src/programs/sockops.rs (one early return per variant, listed there): build with
# `cargo xtask build-ebpf && cargo build --release -p enforcer -p enforcer-tests --bins` first.
# Works in its own namespace and child cgroup, and removes them, the agent and its pins on exit.
set -u
N=${N:-20000}; ROUNDS=${ROUNDS:-5}
BIN=$(cd "$(dirname "$0")/.." && pwd)/target/release
CG=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)/exp-estab
LOG=$(mktemp)
cleanup() { kill ${AG:-} 2>/dev/null; wait ${AG:-} 2>/dev/null; ip netns del expe 2>/dev/null; rmdir $CG 2>/dev/null; rm -rf /sys/fs/bpf/exp-estab; rm -f $LOG; }
trap cleanup EXIT
ip netns add expe; ip -n expe link set lo up; mkdir -p $CG
nsenter --net=/var/run/netns/expe $BIN/enforcer run --interval 1s --cgroup $CG --pin-dir /sys/fs/bpf/exp-estab > $LOG 2>&1 &
AG=$!
for i in $(seq 50); do grep -q "enforcer attached" $LOG && break; sleep 0.2; done
old=$(cat /proc/sys/kernel/bpf_stats_enabled); echo 1 > /proc/sys/kernel/bpf_stats_enabled
stat() { bpftool prog show --json | python3 -c 'import json,sys
for p in json.load(sys.stdin):
  if p.get("name","").startswith("enforcer_sockop"): print(p.get("run_cnt",0), p.get("run_time_ns",0))'; }
for r in $(seq $ROUNDS); do
  nsenter --net=/var/run/netns/expe sh -c "echo \$\$ > $CG/cgroup.procs && exec $BIN/loadgen serve 9100 crr" & SV=$!
  sleep 0.3
  read c0 t0 < <(stat)
  nsenter --net=/var/run/netns/expe $BIN/loadgen crr-client 127.0.0.1:9100 $N > /dev/null
  read c1 t1 < <(stat)
  kill $SV; wait $SV 2>/dev/null
  python3 -c "print('runs/conn %.2f  ns/run %.0f  ns/conn %.0f' % (($c1-$c0)/$N, ($t1-$t0)/max(1,$c1-$c0), ($t1-$t0)/$N))"
done
echo $old > /proc/sys/kernel/bpf_stats_enabled
