//! The agent's lifecycle as a supervisor sees it: readiness and liveness on the metrics
//! address, and SIGHUP reloading the config without detaching.

use std::{process::Command, thread, time::Duration};

use enforcer_tests::{ConfigFile, Setup, field, remotes, wait_destroyed, wait_for};

fn sighup(pid: u32) {
    let ok = Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill -HUP {pid}");
}

#[test]
fn sighup_reloads_the_config_without_detaching() {
    let mut s = Setup::new();
    // The metrics address in the file, not a flag (a flag wins over the file): a change of it
    // is one a reload must refuse.
    let config = ConfigFile::new("metrics-addr = \"127.0.0.1:9465\"\nthreshold = \"64MiB\"\nstall = \"1s\"\n");
    let agent = s.agent(&["--config", config.path().to_str().unwrap()]);
    let pid = agent.pid().unwrap();
    let ready = |s: &Setup, path: &str| s.ns.http_get("127.0.0.1:9465", path);
    wait_for("/readyz to answer 200", Duration::from_secs(10), || {
        ready(&s, "/readyz").starts_with("HTTP/1.1 200").then_some(())
    });
    assert!(ready(&s, "/healthz").starts_with("HTTP/1.1 200"));

    let attacker = s.zero_window(9000, "127.0.0.1", 2 << 20);
    // Under a 64 MiB threshold the attacker is left alone.
    thread::sleep(Duration::from_millis(2500));
    assert!(agent.events().is_empty(), "{:?}", agent.events());

    // A bad value, then a change the kernel side cannot take: both refused whole, the agent
    // goes on as it was.
    let refused = |n: usize| {
        wait_for("a refused reload", Duration::from_secs(10), || {
            (agent.log_text().matches("reload refused").count() == n).then_some(())
        })
    };
    config.write("threshold = \"lots\"\n");
    sighup(pid);
    refused(1);
    config.write("threshold = \"1MiB\"\nstall = \"1s\"\nmetrics-addr = \"127.0.0.1:9466\"\n");
    sighup(pid);
    refused(2);
    assert!(agent.log_text().contains("metrics-addr cannot change without a restart"), "{}", agent.log_text());
    thread::sleep(Duration::from_millis(1000));
    assert!(agent.events().is_empty(), "a refused reload changed the rule: {:?}", agent.events());
    assert_eq!(field(&agent.status()["settings"], "threshold"), 64 << 20);

    // A good one applies at once: same process, same pins, the new threshold.
    config.write("metrics-addr = \"127.0.0.1:9465\"\nthreshold = \"1MiB\"\nstall = \"1s\"\n");
    sighup(pid);
    wait_destroyed(&agent, &[&attacker]);
    assert_eq!(remotes(&agent.events_of("destroyed")), [attacker.remote.clone()].into());
    assert_eq!(agent.pid(), Some(pid));
    assert!(agent.log_text().contains("settings reloaded"), "{}", agent.log_text());
    assert_eq!(field(&agent.status()["settings"], "threshold"), 1 << 20);
    assert!(ready(&s, "/metrics").contains("enforcer_threshold_bytes 1048576"));
}
