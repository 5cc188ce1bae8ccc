#!/usr/bin/env python3
"""Connect/request/close with and without the agent, alternating, for the throughput gap.

Run as root from the repository root, after `cargo xtask build-ebpf && cargo build --release -p
enforcer -p enforcer-tests --bins`:

    python3 scripts/crr-ab.py                               # the agent as built
    AGENT="--inject-fault sockops" python3 scripts/crr-ab.py  # sock_ops returns before recording

Both ends of `loadgen crr N` (default 20,000) run in a cgroup the agent watches, inside a network
namespace of their own (both deleted at the end). Each round runs bare and with a fresh agent
(`--interval 1s`, started SETTLE seconds before, default 3), the agent first in odd rounds, and
prints the ratio; the last line is the median ratio over ROUNDS rounds (default 8) and how many
were below 1. To find what costs, rebuild with one step of the sock_ops program left out and run
it again (BENCHMARKS.md).
"""
import json, os, statistics, subprocess, time

BIN = os.path.abspath("target/release")
CGROUP2 = next(line.split()[1] for line in open("/proc/mounts") if line.split()[2] == "cgroup2")
NS, CG, PIN = "enforcer-crr-ab", f"{CGROUP2}/enforcer-crr-ab", "/sys/fs/bpf/enforcer-crr-ab"
NSE = ["nsenter", f"--net=/run/netns/{NS}"]
ROUNDS, N = int(os.environ.get("ROUNDS", 8)), os.environ.get("N", "20000")
AGENT, SETTLE = os.environ.get("AGENT", "").split(), float(os.environ.get("SETTLE", "3"))


def crr():
    script = f"echo $$ > {CG}/cgroup.procs && exec {BIN}/loadgen crr {N}"
    return json.loads(subprocess.check_output(NSE + ["sh", "-c", script]))["per_second"]


def run(with_agent):
    agent = None
    if with_agent:
        args = [f"{BIN}/enforcer", "run", "--cgroup", CG, "--pin-dir", PIN, "--interval", "1s"] + AGENT
        agent = subprocess.Popen(NSE + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if os.path.exists(PIN + "/info"):
                break
            time.sleep(0.05)
        time.sleep(SETTLE)
    try:
        return crr()
    finally:
        if agent:
            agent.terminate()
            agent.wait()


def main():
    subprocess.run(["ip", "netns", "add", NS], check=True)
    subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
    os.makedirs(CG, exist_ok=True)
    try:
        ratios = []
        for r in range(ROUNDS):
            agent_first = r % 2 == 1
            rate = {}
            for with_agent in (agent_first, not agent_first):
                rate[with_agent] = run(with_agent)
                time.sleep(1)
            ratios.append(rate[True] / rate[False])
            print(f"round {r + 1}: bare {rate[False]:.0f}/s, agent {rate[True]:.0f}/s, ratio {ratios[-1]:.3f}", flush=True)
        below = sum(x < 1 for x in ratios)
        print(f"median ratio {statistics.median(ratios):.3f}, below 1 in {below} of {len(ratios)} rounds")
    finally:
        subprocess.run(["ip", "netns", "del", NS])
        time.sleep(1)
        os.rmdir(CG)
        subprocess.run(["rm", "-rf", PIN])


if __name__ == "__main__":
    main()
