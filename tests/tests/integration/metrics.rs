//! The Prometheus endpoint, scraped for real while enforcement goes on.

use std::{thread, time::Duration};

use enforcer_tests::{
    Agent, Cgroup, ECONNABORTED, Netns, Peer, PinDir, agent_scrape, connected_many, field, page_size, sample,
    sockstat_tcp_mem, wait_for,
};

#[test]
fn metrics_are_scraped_while_enforcement_goes_on() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let addr = "127.0.0.1:9465";
    let agent = Agent::start(
        &ns,
        &cg,
        &["--log-format", "json", "--metrics-addr", addr, "--threshold", "64KiB", "--policy", "heffner"],
    );
    let (mut server, listen) = Peer::listening(&ns, &cg, "127.0.0.1:9000");
    let mut clients = Peer::start(&ns, None);
    // Two zero-window attackers and two idle connections.
    for (i, rcvbuf) in [4096, 4096, 0, 0].into_iter().enumerate() {
        clients.cmd(&format!("connect {listen} {rcvbuf}"));
        server.cmd(&format!("wait-accepted {}", i + 1));
    }
    assert!(server.num("write 0 1000000") > 0 && server.num("write 1 1000000") > 0);

    wait_for("both attackers destroyed", Duration::from_secs(20), || {
        (agent.events_of("destroyed").len() == 2).then_some(())
    });
    assert_eq!(server.num("soerror 0"), ECONNABORTED);
    assert_eq!(server.num("soerror 1"), ECONNABORTED);
    // The server closes what was aborted, as a real one does on ECONNABORTED; the kernel frees
    // the sockets with their records, and the idle two remain.
    server.cmd("close 0");
    server.cmd("close 1");
    wait_for("the aborted sockets to be freed", Duration::from_secs(10), || (agent.sockets().len() == 2).then_some(()));
    assert_eq!(server.num("soerror 2"), 0);
    assert_eq!(server.num("soerror 3"), 0);
    let status = agent.status();
    assert_eq!(field(&status["counters"], "tracked"), 4, "{status}");

    let scrape = agent_scrape(&ns, addr);
    assert!(scrape.starts_with("HTTP/1.1 200 OK"), "{scrape}");
    let get = |series: &str| sample(&scrape, series).unwrap_or_else(|| panic!("no {series} in:\n{scrape}"));
    assert_eq!(get("enforcer_kernel_events_total{event=\"tracked\"}"), 4.0);
    assert_eq!(get("enforcer_kernel_errors_total{error=\"storage\"}"), 0.0);
    assert_eq!(get("enforcer_decisions_total{event=\"destroyed\",reason=\"stalled\"}"), 2.0);
    assert_eq!(get("enforcer_threshold_bytes"), 65536.0);
    assert_eq!(get("enforcer_kernel_errors_total{error=\"sockops\"}"), 0.0);
    assert_eq!(get("enforcer_dry_run"), 0.0);
    assert_eq!(get(&format!("enforcer_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), 1.0);
    for name in [
        "enforcer_pressure_bytes",
        "enforcer_tracked_sockets",
        "enforcer_scanned_out_sockets",
        "enforcer_offenders",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        get(name);
    }
    promtool_accepts(&scrape);
    assert!(scrape.contains("# TYPE enforcer_scan_duration_seconds histogram"), "{scrape}");
    assert!(scrape.contains("enforcer_program_runs_total{program=\"enforcer_sockops\"}"), "{scrape}");
    // The gauge follows the scan of the next interval.
    wait_for("the tracked-sockets gauge to follow the closes", Duration::from_secs(5), || {
        agent_scrape(&ns, addr).contains("enforcer_tracked_sockets 2").then_some(())
    });
    let other = ns.http_get(addr, "/");
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}

/// `promtool check metrics` (Prometheus's own linter) finds nothing wrong with a scrape.
fn promtool_accepts(scrape: &str) {
    let body = scrape.split_once("\r\n\r\n").map_or(scrape, |(_, b)| b);
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; `cargo xtask test` installs it)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n{body}");
}

#[test]
fn a_metrics_address_in_use_fails_the_start_before_anything_is_attached() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let mut holder = Peer::start(&ns, None);
    let addr = holder.cmd("listen 127.0.0.1:9465");
    let pins = PinDir::new();
    let pin_dir = pins.path();
    let out = Agent::spawn_raw(&ns, &cg, pin_dir, &["--threshold", "1MiB", "--metrics-addr", &addr]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("listening for metrics on 127.0.0.1:9465"), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("error")).count(), 1, "{err}");
    // It failed before loading anything: it never attached, and left no pin directory.
    assert!(!err.contains("enforcer attached"), "{err}");
    assert!(!pin_dir.exists(), "{}", pin_dir.display());
}

/// What the agent relies on to skip a walk: the kernel's TCP memory (sockstat's `mem`, global)
/// plus each CPU's reserve is never below what the tracked sockets are charged. Checked against
/// real queues; then, with the threshold far above, the agent skips its walks and says so.
#[test]
fn the_kernels_tcp_memory_bounds_the_tracked_pressure_and_idle_intervals_skip_the_walk() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let addr = "127.0.0.1:9467";
    let agent = Agent::start(&ns, &cg, &["--metrics-addr", addr, "--threshold", "4GiB", "--interval", "100ms"]);
    let (mut server, _clients) = connected_many(&ns, &cg, "127.0.0.1:9000", 8, 4096);
    let queued = server.num("write-range 0 8 1048576");
    assert!(queued > 4 << 20, "only {queued} bytes queued");

    let page = page_size();
    let cpus: u64 = {
        let list = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
        list.trim()
            .split(',')
            .map(|r| r.split_once('-').map_or(1, |(a, b)| b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1))
            .sum()
    };
    let reserve = std::fs::read_to_string("/proc/sys/net/core/mem_pcpu_rsv")
        .map_or(1 << 20, |t| t.trim().parse::<u64>().unwrap() * page);
    for _ in 0..5 {
        let charged = field(&agent.status()["queued"], "charged_bytes");
        let mem = sockstat_tcp_mem();
        assert!(charged > 4 << 20, "charged {charged}");
        assert!(charged <= mem + cpus * reserve, "charged {charged} > sockstat {mem} bytes + {cpus} × {reserve}");
        thread::sleep(Duration::from_millis(100));
    }
    wait_for("intervals that skip the walk", Duration::from_secs(5), || {
        (sample(&agent_scrape(&ns, addr), "enforcer_scans_total{kind=\"skipped\"}")? >= 5.0).then_some(())
    });
    // The first interval always walks.
    let scrape = agent_scrape(&ns, addr);
    let walks: f64 = ["summary", "candidates"]
        .iter()
        .filter_map(|k| sample(&scrape, &format!("enforcer_scans_total{{kind=\"{k}\"}}")))
        .sum();
    assert!(walks >= 1.0, "{scrape}");
}
