//! Load for `cargo xtask bench`: both ends in this process (so both are in the cgroup the
//! benchmark watches). Prints one JSON object.
//!   loadgen crr N      N × (connect, 64-byte request, 64-byte response, close) on loopback
//!   loadgen bulk BYTES one connection, BYTES sent in 128 KiB writes
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    thread,
    time::Instant,
};

/// The split modes: the server side alone in the watched cgroup, the client outside it, as in
/// production where only one end of a connection is on the host.
///   loadgen serve PORT crr           answer crr clients forever
///   loadgen serve PORT bulk BYTES    send BYTES to each client, then close
///   loadgen crr-client ADDR N        N × crr against a `serve … crr`
///   loadgen bulk-client ADDR         read until EOF from a `serve … bulk`
fn split(args: &[String]) -> bool {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(1) {
        "serve" => {
            let listener = TcpListener::bind(("127.0.0.1", arg(2).parse().unwrap_or_else(|_| usage())))
                .unwrap_or_else(|e| fail(e));
            let bulk: Option<u64> = (arg(3) == "bulk").then(|| arg(4).parse().unwrap_or_else(|_| usage()));
            for mut s in listener.incoming().flatten() {
                match bulk {
                    Some(n) => {
                        let buf = vec![1u8; 128 * 1024];
                        let mut sent = 0;
                        while sent < n && s.write_all(&buf).is_ok() {
                            sent += buf.len() as u64;
                        }
                    }
                    None => {
                        let mut buf = [0u8; 64];
                        if s.read_exact(&mut buf).is_ok() {
                            let _ = s.write_all(&buf);
                        }
                    }
                }
            }
            true
        }
        "crr-client" => {
            let n: u64 = arg(3).parse().unwrap_or_else(|_| usage());
            let start = Instant::now();
            let mut buf = [7u8; 64];
            for _ in 0..n {
                let mut s = TcpStream::connect(arg(2)).unwrap_or_else(|e| fail(e));
                s.write_all(&buf).unwrap_or_else(|e| fail(e));
                s.read_exact(&mut buf).unwrap_or_else(|e| fail(e));
                let _ = s.read(&mut buf);
            }
            let secs = start.elapsed().as_secs_f64();
            println!("{{\"connections\":{n},\"seconds\":{secs},\"per_second\":{}}}", n as f64 / secs);
            true
        }
        "bulk-client" => {
            let mut s = TcpStream::connect(arg(2)).unwrap_or_else(|e| fail(e));
            let mut buf = vec![0u8; 256 * 1024];
            let start = Instant::now();
            let mut got = 0u64;
            while let Ok(r) = s.read(&mut buf) {
                if r == 0 {
                    break;
                }
                got += r as u64;
            }
            let secs = start.elapsed().as_secs_f64();
            println!("{{\"bytes\":{got},\"seconds\":{secs},\"bytes_per_second\":{}}}", got as f64 / secs);
            true
        }
        _ => false,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if split(&args) {
        return;
    }
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or_else(|| usage());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail(e));
    let addr = listener.local_addr().unwrap_or_else(|e| fail(e));
    match args[1].as_str() {
        "crr" => {
            thread::spawn(move || {
                let mut buf = [0u8; 64];
                for mut s in listener.incoming().flatten() {
                    // The server closes first, so TIME_WAIT stays on its side, not on the
                    // client's ephemeral ports.
                    if s.read_exact(&mut buf).is_ok() {
                        let _ = s.write_all(&buf);
                    }
                }
            });
            let start = Instant::now();
            let mut buf = [7u8; 64];
            for _ in 0..n {
                let mut s = TcpStream::connect(addr).unwrap_or_else(|e| fail(e));
                s.write_all(&buf).unwrap_or_else(|e| fail(e));
                s.read_exact(&mut buf).unwrap_or_else(|e| fail(e));
                let _ = s.read(&mut buf);
            }
            let secs = start.elapsed().as_secs_f64();
            println!("{{\"connections\":{n},\"seconds\":{secs},\"per_second\":{}}}", n as f64 / secs);
        }
        "bulk" => {
            let reader = thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap_or_else(|e| fail(e));
                let mut buf = vec![0u8; 256 * 1024];
                while s.read(&mut buf).is_ok_and(|r| r > 0) {}
            });
            let mut s = TcpStream::connect(addr).unwrap_or_else(|e| fail(e));
            let buf = vec![1u8; 128 * 1024];
            let start = Instant::now();
            let mut sent = 0;
            while sent < n {
                s.write_all(&buf).unwrap_or_else(|e| fail(e));
                sent += buf.len() as u64;
            }
            drop(s);
            let _ = reader.join();
            let secs = start.elapsed().as_secs_f64();
            println!("{{\"bytes\":{sent},\"seconds\":{secs},\"bytes_per_second\":{}}}", sent as f64 / secs);
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: loadgen crr N | loadgen bulk BYTES");
    std::process::exit(2);
}

fn fail(e: std::io::Error) -> ! {
    eprintln!("loadgen: {e}");
    std::process::exit(1);
}
