//! `enforcer sockets`: a fresh snapshot as a table or JSON.
use std::{cmp::Reverse, io::Write};

use anyhow::{Context, Result};

use crate::{
    cli::{SocketsArgs, SortKey},
    pins::PinDir,
    socket::Socket,
    sys,
    units::{human_bytes, human_ms},
};

pub fn run(args: SocketsArgs) -> Result<()> {
    sys::require_root("enforcer sockets")?;
    let pins = PinDir::open(&args.pins.pin_dir)?;
    let mut sockets = pins.snapshot()?.sockets;
    sockets.retain(|s| {
        args.remote.is_none_or(|net| net.contains(&s.remote.ip()))
            && args.port.is_none_or(|p| s.local.port() == p || s.remote.port() == p)
    });
    match args.sort {
        SortKey::SendQueue => sockets.sort_by_key(|s| Reverse(s.send_queue)),
        SortKey::Charged => sockets.sort_by_key(|s| Reverse(s.charged)),
        SortKey::Stalled => sockets.sort_by_key(|s| Reverse(s.stalled_ms)),
        SortKey::Age => sockets.sort_by_key(|s| Reverse(s.age_ms)),
    }
    if let Some(n) = args.limit {
        sockets.truncate(n);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &sockets).context("writing JSON")?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &sockets)?;
    }
    Ok(())
}

fn print_table(out: &mut impl Write, sockets: &[Socket]) -> Result<()> {
    let width = |f: fn(&Socket) -> String, min: usize| sockets.iter().map(|s| f(s).len()).max().unwrap_or(0).max(min);
    let (lw, rw) = (width(|s| s.local.to_string(), 5), width(|s| s.remote.to_string(), 6));
    writeln!(
        out,
        "{:<lw$}  {:<rw$}  {:<11}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>8}  {:>8}  {:>7}  {:>10}  {:>10}",
        "LOCAL",
        "REMOTE",
        "STATE",
        "SEND-Q",
        "CHARGED",
        "UNSENT",
        "RECV-Q",
        "PEER-WND",
        "STALLED",
        "AGE",
        "RETRANS",
        "CGROUP",
        "NETNS"
    )?;
    for s in sockets {
        writeln!(
            out,
            "{:<lw$}  {:<rw$}  {:<11}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>8}  {:>8}  {:>7}  {:>10}  {:>10}",
            s.local.to_string(),
            s.remote.to_string(),
            s.state,
            human_bytes(s.send_queue),
            human_bytes(s.charged),
            human_bytes(s.unsent),
            human_bytes(s.recv_queue),
            human_bytes(s.peer_window),
            human_ms(s.stalled_ms),
            human_ms(s.age_ms),
            s.retransmits,
            s.cgroup_id,
            s.netns,
        )?;
    }
    if sockets.is_empty() {
        writeln!(out, "(no tracked sockets)")?;
    }
    Ok(())
}
