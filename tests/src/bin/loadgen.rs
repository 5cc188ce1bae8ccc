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

fn main() {
    let args: Vec<String> = std::env::args().collect();
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
