//! Map, program and pin names, shared so the loader, the programs and the CLI never disagree.
//! The pin directory holds one file per name in `PIN_*`.
/// The socket-local storage map of `SockRecord`s.
pub const MAP_RECORDS: &str = "RECORDS";
pub const MAP_RECORD_AT_FIRST_SIGHT: &str = "RECORD_AT_FIRST_SIGHT";
pub const MAP_SCAN_PARAMS: &str = "SCAN_PARAMS";
pub const MAP_SCAN_SUMMARY: &str = "SCAN_SUMMARY";
pub const MAP_REMOTE_COUNTS: &str = "REMOTE_COUNTS";
pub const MAP_STATS: &str = "STATS";
pub const MAP_AGENT_INFO: &str = "AGENT_INFO";
pub const MAP_AGENT_SETTINGS: &str = "AGENT_SETTINGS";
pub const MAP_KILLS: &str = "KILLS";
pub const MAP_KILL_COUNTERS: &str = "KILL_COUNTERS";
pub const MAP_CONTAINED: &str = "CONTAINED";
pub const MAP_CONTAINED_LABELS: &str = "CONTAINED_LABELS";
/// Proxy mode: where each socket's bytes were relayed last, by cookie.
pub const MAP_RELAYS: &str = "RELAYS";
/// Proxy mode: each thread's last read from a tracked socket.
pub const MAP_LAST_RECV: &str = "LAST_RECV";
pub const MAP_REVISIT_KEYS: &str = "REVISIT_KEYS";
pub const MAP_REVISIT_OUT: &str = "REVISIT_OUT";
pub const MAP_REVISIT_CURSOR: &str = "REVISIT_CURSOR";
pub const GLOBAL_OFFSETS: &str = "KERNEL_OFFSETS";
pub const GLOBAL_WATCH: &str = "WATCH";

pub const PROG_SOCKOPS: &str = "enforcer_sockops";
/// Every tracked socket, for the CLI (the pinned snapshot).
pub const PROG_SNAPSHOT: &str = "enforcer_snapshot";
/// The agent's scan: sums every tracked socket, emits the ones its rule could act on.
pub const PROG_SCAN: &str = "enforcer_scan";
/// The same over `iter/tcp`, per network namespace, for kernels that refuse map-element
/// iterators.
pub const PROG_SNAPSHOT_TCP: &str = "enforcer_snapshot_tcp";
pub const PROG_SCAN_TCP: &str = "enforcer_scan_tcp";
/// Gives connections that predate the agent a record (`iter/tcp`, run once per namespace).
pub const PROG_ADOPT: &str = "enforcer_adopt";
/// Looks up the last walk's candidates by 4-tuple between walks of every socket; never attached,
/// run by the agent with `BPF_PROG_TEST_RUN`.
pub const PROG_REVISIT: &str = "enforcer_revisit";
/// Which process holds each tracked socket (`iter/task_file`), for attribution.
pub const PROG_HOLDERS: &str = "enforcer_holders";
/// Proxy mode: a thread's reads from (`tp_btf/sock_recv_length`) and writes to
/// (`tp_btf/sock_send_length`) tracked sockets, which pair into relays.
pub const PROG_RELAY_RECV: &str = "enforcer_relay_recv";
pub const PROG_RELAY_SEND: &str = "enforcer_relay_send";
/// The same on fexit of `tcp_recvmsg` and `tcp_sendmsg`, for kernels without those tracepoints.
pub const PROG_RELAY_RECV_FEXIT: &str = "enforcer_relay_recv_fexit";
pub const PROG_RELAY_SEND_FEXIT: &str = "enforcer_relay_send_fexit";
pub const FN_TCP_RECVMSG: &str = "tcp_recvmsg";
pub const FN_TCP_SENDMSG: &str = "tcp_sendmsg";
/// The tracepoints they attach to.
pub const TP_SOCK_RECV: &str = "sock_recv_length";
pub const TP_SOCK_SEND: &str = "sock_send_length";

/// `iter/<this>` of the snapshot and the scan: they walk the records, not the TCP tables.
pub const ITER_SK_STORAGE: &str = "bpf_sk_storage_map";
/// `iter/<this>` of adoption: every TCP socket of the reader's network namespace.
pub const ITER_TCP: &str = "tcp";
/// `iter/<this>` of the holders walk: every open file of every process.
pub const ITER_TASK_FILE: &str = "task_file";

pub const PIN_SOCKETS: &str = "sockets";
pub const PIN_STATS: &str = "stats";
pub const PIN_INFO: &str = "info";
pub const PIN_SETTINGS: &str = "settings";
pub const PIN_KILLS: &str = "kills";
pub const PIN_KILL_COUNTERS: &str = "kill_counters";
pub const PIN_CONTAINED: &str = "contained";
pub const PIN_CONTAINED_LABELS: &str = "contained_labels";
/// The pinned snapshot link: reading this file runs the snapshot (every namespace at once).
pub const PIN_SNAPSHOT: &str = "snapshot";
/// Instead of `snapshot` on kernels that refuse map-element iterators: reading this file
/// runs the snapshot over the reader's network namespace.
pub const PIN_SNAPSHOT_TCP: &str = "snapshot_tcp";
/// The pinned holders link: reading it lists `Holder`s (`enforcer sockets -p`).
pub const PIN_HOLDERS: &str = "holders";
/// Every pin the agent makes, for cleaning up after an agent that died.
pub const ALL_PINS: [&str; 11] = [
    PIN_SNAPSHOT,
    PIN_SNAPSHOT_TCP,
    PIN_HOLDERS,
    PIN_SOCKETS,
    PIN_STATS,
    PIN_INFO,
    PIN_SETTINGS,
    PIN_KILLS,
    PIN_KILL_COUNTERS,
    PIN_CONTAINED,
    PIN_CONTAINED_LABELS,
];
