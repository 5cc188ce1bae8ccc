//! The proxy case (seeds/000): a proxy's upstreams to a live ticker whose clients left receive a
//! push every few seconds for nobody. `--proxy` learns which connections relay for whom; the
//! per-remote cap then takes those orphans first and never a connection that relays for an open
//! one (a live stream, or a silent long-poll whose client waits).
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::Stdio,
    time::Duration,
};

use enforcer_tests::{Agent, Cgroup, Netns, Reaped, Scratch, process::output_within, sibling_bin, ss, wait_for};
use serde_json::Value;

/// `program` in the namespace (in `cg` when given), its stdout read up to the line it prints
/// when ready (`listening`), stopped on drop.
fn start(ns: &Netns, cg: Option<&Cgroup>, program: &Path, args: &[&str], ready: &str) -> Reaped {
    let mut cmd = match cg {
        Some(cg) => {
            let mut c = ns.command("sh");
            let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
            c.arg("-c").arg(format!(
                "echo $$ > {}/cgroup.procs && exec {} {}",
                cg.path.display(),
                program.display(),
                quoted.join(" ")
            ));
            c
        }
        None => {
            let mut c = ns.command(program);
            c.args(args);
            c
        }
    };
    let mut child =
        cmd.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    let mut first = String::new();
    if !ready.is_empty() {
        let stdout = child.stdout.take().unwrap();
        BufReader::new(stdout).read_line(&mut first).unwrap();
        assert_eq!(first.trim(), ready, "{} did not start", program.display());
    }
    Reaped(child)
}

/// Established connections in `ns` whose remote end is `addr`.
fn upstreams(ns: &Netns, addr: &str) -> usize {
    ss::established(ns, &["dst", addr]).len()
}

/// What `proxy-peer clients` reports: each live client, and the churning ones' outcomes.
fn clients(ns: &Netns, args: &[&str], limit: Duration) -> Value {
    let out = output_within(ns.command(sibling_bin("proxy-peer")).arg("clients").args(args), limit);
    assert!(out.status.success(), "proxy-peer clients failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("clients' report: {e}"))
}

/// Every live client read for the whole run, without an error and without a gap over `gap_ms`.
fn assert_live_clients_served(report: &Value, n: usize, gap_ms: u64, min_bytes: u64) {
    let live = report["live"].as_array().unwrap();
    assert_eq!(live.len(), n, "{report}");
    for c in live {
        assert!(c["error"].is_null(), "a live client was cut: {c}");
        assert!(c["max_gap_ms"].as_u64().unwrap() <= gap_ms, "a live client went without a push: {c}");
        assert!(c["bytes"].as_u64().unwrap() >= min_bytes, "a live client missed pushes: {c}");
    }
}

/// How many churning clients came and left, each served until it left (no error of any kind).
fn churned_ok(report: &Value) -> u64 {
    let churn = report["churn"].as_object().unwrap();
    assert!(churn.keys().all(|k| k == "ok"), "a departing client was cut: {report}");
    churn.get("ok").and_then(Value::as_u64).unwrap_or(0)
}

/// How the kernel lets proxy mode see relays: the `sock` tracepoints, where its BTF has them;
/// otherwise fexit on `tcp_recvmsg`/`tcp_sendmsg`, which some kernels refuse. Where both are
/// refused the agent must refuse `--proxy` in one line, and the test has nothing else to check.
#[derive(Debug, PartialEq)]
enum Relays {
    Tracepoints,
    Fexit,
    Refused,
}

/// Starts an agent with `--proxy` and reads, from its start or its refusal, which way it sees
/// relays; checks that against the kernel's BTF (the tracepoints are taken wherever they exist).
fn relays_on_this_kernel(ns: &Netns, cg: &Cgroup) -> Relays {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
    let has = |name: &[u8]| btf.windows(name.len()).any(|w| w == name);
    let tracepoints = has(b"btf_trace_sock_send_length") && has(b"btf_trace_sock_recv_length");
    let (pins, log) = (enforcer_tests::PinDir::new(), Scratch::new("proxy-probe"));
    let log_path = log.path().join("agent.log");
    let logfile = std::fs::File::create(&log_path).unwrap();
    let child = ns
        .command(enforcer_tests::enforcer_bin())
        .arg("run")
        .arg("--cgroup")
        .arg(&cg.path)
        .arg("--pin-dir")
        .arg(pins.path())
        .args(["--proxy", "--threshold", "1GiB"])
        .stdout(logfile.try_clone().unwrap())
        .stderr(logfile)
        .spawn()
        .unwrap();
    let mut agent = Reaped(child);
    let (status, text) = wait_for("the agent to attach or to refuse --proxy", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        match agent.0.try_wait().unwrap() {
            Some(status) => Some((Some(status), text)),
            None => text.contains("enforcer attached").then_some((None, text)),
        }
    });
    drop(agent);
    let fell_back = text.contains("proxy mode tries fexit");
    assert_eq!(fell_back, !tracepoints, "the tracepoints are in BTF: {tracepoints}; the agent said:\n{text}");
    match status {
        None => {
            if tracepoints {
                Relays::Tracepoints
            } else {
                Relays::Fexit
            }
        }
        Some(status) => {
            assert!(!tracepoints, "the agent refused --proxy with the tracepoints in BTF:\n{text}");
            assert_eq!(status.code(), Some(1), "{text}");
            let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
            assert!(errors.len() == 1 && errors[0].contains("refused both"), "{text}");
            Relays::Refused
        }
    }
}

#[test]
fn a_one_thread_relay_keeps_live_streams_and_long_polls_and_its_orphans_go() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let relays = relays_on_this_kernel(&ns, &cg);
    eprintln!("proxy mode sees relays here through: {relays:?}");
    if relays == Relays::Refused {
        return;
    }
    let peer = sibling_bin("proxy-peer");
    // A ticker pushing every 500 ms, and a long-poll server that never answers.
    let _ticker = start(
        &ns,
        None,
        &peer,
        &["ticker", "--live", "127.0.0.11:8080", "--silent", "127.0.0.15:8080", "--period-ms", "500"],
        "listening",
    );
    let _stream = start(
        &ns,
        Some(&cg),
        &peer,
        &["relay", "--listen", "127.0.0.1:3128", "--upstream", "127.0.0.11:8080"],
        "listening",
    );
    let _poll = start(
        &ns,
        Some(&cg),
        &peer,
        &["relay", "--listen", "127.0.0.1:3129", "--upstream", "127.0.0.15:8080"],
        "listening",
    );
    let agent = Agent::start_json(
        &ns,
        &cg,
        &[
            "--threshold",
            "1GiB",
            "--proxy",
            "--max-per-remote",
            "2",
            "--orphan-after",
            "2s",
            "--idle",
            "3s",
            "--protect-port",
            "3128",
            "--protect-port",
            "3129",
        ],
    );
    // Three live clients on each relay (over the cap of 2, so the cap must spare them), and two
    // clients a second for 8 s that leave after 2 s: their upstreams are kept and read for
    // nobody by the stream relay, kept silent by the long-poll one.
    let args = |proxy: &'static str| -> [&'static str; 16] {
        [
            "--proxy",
            proxy,
            "--live",
            "3",
            "--to",
            "127.0.0.1:1",
            "--churn-per-s",
            "2",
            "--churn-for-ms",
            "8000",
            "--churn-to",
            "127.0.0.1:1",
            "--stay-ms",
            "2000",
            "--run-ms",
            "20000",
        ]
    };
    let started = std::time::Instant::now();
    let (streams, polls) = std::thread::scope(|s| {
        let streams = s.spawn(|| clients(&ns, &args("127.0.0.1:3128"), Duration::from_secs(60)));
        let polls = s.spawn(|| clients(&ns, &args("127.0.0.1:3129"), Duration::from_secs(60)));
        // While the live clients are still there: every orphan and idle upstream gone, the live
        // ones kept and shown as relaying.
        let deadline = started + Duration::from_secs(30);
        loop {
            let (s, p) = (upstreams(&ns, "127.0.0.11:8080"), upstreams(&ns, "127.0.0.15:8080"));
            if started.elapsed() > Duration::from_secs(9) && (s, p) == (3, 3) {
                break;
            }
            let destroyed: Vec<String> = agent
                .events_of("destroyed")
                .iter()
                .map(|e| format!("{} {} {}", e["remote"], e["reason"], e["message"]))
                .collect();
            assert!(
                std::time::Instant::now() < deadline,
                "waiting for the orphans and the idle long-polls to go: {s} upstreams of the stream relay, {p} of the \
                 long-poll one (3 each are live); destroyed:\n{}",
                destroyed.join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        for sock in
            agent.sockets().iter().filter(|x| x["remote"] == "127.0.0.11:8080" || x["remote"] == "127.0.0.15:8080")
        {
            assert_eq!(sock["relay_state"], "live", "{sock}");
        }
        (streams.join().unwrap(), polls.join().unwrap())
    });
    // A push every 500 ms; a gap of seconds would mean the stream was cut and the relay lost it.
    assert_live_clients_served(&streams, 3, 5000, 100 * 30);
    assert_live_clients_served(&polls, 3, u64::MAX, 0);
    let churned = churned_ok(&streams) + churned_ok(&polls);
    let destroyed = agent.events_of("destroyed");
    let reasons = |remote: &str| -> Vec<String> {
        let mut r: Vec<String> = destroyed
            .iter()
            .filter(|e| e["remote"] == remote)
            .map(|e| e["reason"].as_str().unwrap().to_owned())
            .collect();
        r.dedup();
        r
    };
    // Orphans of the stream relay go as orphans; the silent long-polls whose clients left
    // relayed nothing out, and go as idle beyond the cap.
    assert_eq!(reasons("127.0.0.11:8080"), ["orphan"], "{destroyed:?}");
    assert_eq!(reasons("127.0.0.15:8080"), ["remote_cap"], "{destroyed:?}");
    assert_eq!(destroyed.len() as u64, churned, "one destroy per departed client's upstream: {destroyed:?}");
    assert!(agent.events_of("repeat_offender").is_empty(), "a cap eviction flagged a remote");
    assert_eq!(agent.status()["contained"], serde_json::json!([]));
}

/// Debian's squid as a forward proxy that keeps fetching after its last client left
/// (`quick_abort_min -1 KB`), in front of a ticker on three addresses that pushes 100 bytes every
/// 2 s, and a quiet address that answers once: 20 clients stay for the whole run, 4 a second
/// come for 60 s and leave after 5 s. Without `--proxy` the cap removed none of the ticker's
/// orphans (76–84 upstreams per address) or cut every live stream (README, the proxy case).
#[test]
fn squid_upstreams_whose_clients_left_are_closed_and_live_streams_never() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    if let Relays::Refused = relays_on_this_kernel(&ns, &cg) {
        eprintln!("this kernel refuses both ways proxy mode sees relays: it refused --proxy in one line");
        return;
    }
    let squid = ["/usr/sbin/squid", "/usr/bin/squid"].into_iter().find(|p| Path::new(p).exists());
    let squid = squid.expect("squid is missing: `cargo xtask test` installs Debian's squid");
    let scratch = Scratch::new("squid");
    // squid drops to its own user: its files must be writable by it.
    std::fs::set_permissions(scratch.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let dir = scratch.path().display();
    let conf = scratch.path().join("squid.conf");
    std::fs::write(
        &conf,
        format!(
            "http_port 127.0.0.1:3128\nhttp_access allow all\nquick_abort_min -1 KB\n\
             cache_mem 64 MB\nmaximum_object_size_in_memory 8 MB\npid_filename {dir}/squid.pid\n\
             cache_log {dir}/cache.log\naccess_log none\ncache_store_log none\ncoredump_dir {dir}\n\
             shutdown_lifetime 0 seconds\ndns_nameservers 127.0.0.1\n"
        ),
    )
    .unwrap();
    let peer = sibling_bin("proxy-peer");
    let tickers = "127.0.0.11:8080,127.0.0.12:8080,127.0.0.13:8080";
    let _ticker = start(&ns, None, &peer, &["ticker", "--live", tickers, "--quiet", "127.0.0.14:8080"], "listening");
    let _squid = start(&ns, Some(&cg), Path::new(squid), &["-N", "-f", &conf.display().to_string()], "");
    wait_for("squid to listen on 3128", Duration::from_secs(30), || {
        let out = output_within(ns.command("ss").args(["-Hltn", "sport", "3128"]), Duration::from_secs(10));
        (!out.stdout.is_empty()).then_some(())
    });
    let agent = Agent::start_json(
        &ns,
        &cg,
        &[
            "--interval",
            "1s",
            "--threshold",
            "1GiB",
            "--proxy",
            "--max-per-remote",
            "5",
            "--idle",
            "10s",
            "--protect-port",
            "3128",
        ],
    );
    let args = [
        "--proxy",
        "127.0.0.1:3128",
        "--http",
        "--live",
        "20",
        "--to",
        tickers,
        "--churn-per-s",
        "4",
        "--churn-for-ms",
        "60000",
        "--churn-to",
        &format!("{tickers},127.0.0.14:8080"),
        "--stay-ms",
        "5000",
        "--run-ms",
        "82000",
    ];
    let started = std::time::Instant::now();
    let (report, counts) = std::thread::scope(|s| {
        let report = s.spawn(|| clients(&ns, &args, Duration::from_secs(150)));
        // From when the last churning client left (65 s) until 20 s after the churn stopped
        // (81 s, the live clients still there), the upstreams of each address must come down to
        // the cap plus its live clients, the quiet address's to the cap; the last look's counts
        // are checked below against each address's own number of live clients.
        std::thread::sleep(Duration::from_secs(66).saturating_sub(started.elapsed()));
        let mut counts: Vec<usize>;
        loop {
            counts = tickers.split(',').chain(["127.0.0.14:8080"]).map(|a| upstreams(&ns, a)).collect();
            // proxy-peer spreads the 20 live clients over the addresses in turn: 7, 7, 6.
            let limits = [5 + 7, 5 + 7, 5 + 6, 5];
            if counts.iter().zip(limits).all(|(n, l)| *n <= l) || started.elapsed() > Duration::from_secs(81) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        (report.join().unwrap(), counts)
    });
    assert_live_clients_served(&report, 20, 5000, 100 * 35);
    assert!(churned_ok(&report) >= 200, "{report}");
    let live = |addr: &str| report["live"].as_array().unwrap().iter().filter(|c| c["to"] == addr).count();
    for (addr, n) in tickers.split(',').zip(&counts) {
        assert!(*n <= 5 + live(addr), "{addr}: {n} upstreams for {} live clients, cap 5 ({counts:?})", live(addr));
    }
    assert!(counts[3] <= 5, "the quiet address kept {} upstreams, cap 5", counts[3]);
    let destroyed = agent.events_of("destroyed");
    // 60 churning clients per address left; all but the cap's worth of their upstreams went.
    for addr in tickers.split(',') {
        let n = destroyed.iter().filter(|e| e["remote"] == addr && e["reason"] == "orphan").count();
        assert!(n >= 60 - 5, "{addr}: only {n} orphans closed");
    }
    for e in &destroyed {
        assert!(e["reason"] == "orphan" || e["reason"] == "remote_cap", "{e}");
    }
    assert!(agent.events_of("repeat_offender").is_empty(), "a cap eviction flagged a remote");
    let cache_log = std::fs::read_to_string(scratch.path().join("cache.log")).unwrap_or_default();
    assert!(!cache_log.contains("FATAL"), "{cache_log}");
}
