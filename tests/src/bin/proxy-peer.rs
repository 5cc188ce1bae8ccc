//! The proxy case's peers, each a mode of one binary:
//!
//! - `ticker --live ADDR... [--quiet ADDR...] [--silent ADDR...] --period-ms P`: a live ticker
//!   (the seed's "live ticker" servers). Each connection's request is read, then a cacheable
//!   HTTP response that never ends is pushed 100 bytes every P ms; a quiet address pushes once
//!   and then nothing, a silent one nothing at all (a long-poll).
//! - `relay --listen ADDR --upstream ADDR [--chunk BYTES]`: a proxy that relays in one thread,
//!   as event-loop proxies do: each client gets its own upstream, bytes go both ways (at most
//!   `--chunk` per read, default 64 KiB), and when a client leaves its upstream is kept and read
//!   for nobody (what squid does with `quick_abort_min -1`); when an upstream ends, so does its
//!   client's connection.
//! - `clients --proxy ADDR --live N --to ADDR... [--churn-per-s R --churn-for-ms T --churn-to
//!   ADDR... --stay-ms S] --run-ms T [--http]`: N clients that stay for the whole run, spread over
//!   `--to`, and R clients a second for T ms that leave after S ms. Each asks for its address
//!   (as a proxy request with `--http`) and reads. At the end it prints one JSON object: each
//!   live client's bytes, longest gap between pushes and error; the churning ones' errors.
//!
//! Everything goes to stdout as one line when done; errors exit 1 with a message.
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ticker") => ticker(&args[1..]),
        Some("relay") => relay(&args[1..]),
        Some("clients") => clients(&args[1..]),
        _ => Err("usage: proxy-peer ticker|relay|clients ...".to_owned()),
    };
    if let Err(e) = result {
        eprintln!("proxy-peer: {e}");
        std::process::exit(1);
    }
}

/// The values of every `--name VALUE` (repeatable, or comma-separated).
fn values<'a>(args: &'a [String], name: &str) -> Vec<&'a str> {
    args.windows(2).filter(|w| w[0] == name).flat_map(|w| w[1].split(',')).filter(|s| !s.is_empty()).collect()
}

fn value<T: std::str::FromStr>(args: &[String], name: &str, default: Option<T>) -> Result<T, String> {
    match values(args, name).first() {
        Some(v) => v.parse().map_err(|_| format!("{name}: `{v}` does not parse")),
        None => default.ok_or_else(|| format!("{name} is required")),
    }
}

fn addrs(args: &[String], name: &str) -> Result<Vec<SocketAddr>, String> {
    values(args, name).iter().map(|a| a.parse().map_err(|_| format!("{name}: `{a}` is no address"))).collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Pushes {
    Every,
    Once,
    Never,
}

fn ticker(args: &[String]) -> Result<(), String> {
    let period = Duration::from_millis(value(args, "--period-ms", Some(2000))?);
    let mut listeners = Vec::new();
    for (flag, pushes) in [("--live", Pushes::Every), ("--quiet", Pushes::Once), ("--silent", Pushes::Never)] {
        for addr in addrs(args, flag)? {
            let l = TcpListener::bind(addr).map_err(|e| format!("binding {addr}: {e}"))?;
            listeners.push((l, pushes));
        }
    }
    println!("listening");
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|(l, pushes)| {
            thread::spawn(move || {
                for c in l.incoming().flatten() {
                    thread::spawn(move || serve(c, pushes, period));
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Reads the request, then pushes until the peer goes away.
fn serve(mut c: TcpStream, pushes: Pushes, period: Duration) {
    let mut buf = [0u8; 4096];
    if c.read(&mut buf).unwrap_or(0) == 0 || pushes == Pushes::Never {
        // A long-poll: hold the connection, send nothing, until the peer closes it.
        while c.read(&mut buf).is_ok_and(|n| n > 0) {}
        return;
    }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: public, max-age=3600\r\n\
                Connection: close\r\n\r\n";
    let push = [b't'; 100];
    if c.write_all(head.as_bytes()).is_err() {
        return;
    }
    loop {
        if c.write_all(&push).is_err() {
            return;
        }
        if pushes == Pushes::Once {
            while c.read(&mut buf).is_ok_and(|n| n > 0) {}
            return;
        }
        thread::sleep(period);
    }
}

/// One thread, `poll(2)` over every socket: read from one, write to its partner.
fn relay(args: &[String]) -> Result<(), String> {
    let listen: SocketAddr = value(args, "--listen", None)?;
    let upstream: SocketAddr = value(args, "--upstream", None)?;
    let chunk: usize = value(args, "--chunk", Some(65536))?;
    let listener = TcpListener::bind(listen).map_err(|e| format!("binding {listen}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    println!("listening");
    let mut socks: HashMap<i32, TcpStream> = HashMap::new();
    // fd → its partner's fd; an upstream whose client left has none, and is read for nobody.
    let mut partner: HashMap<i32, i32> = HashMap::new();
    let mut upstreams = std::collections::HashSet::new();
    let mut buf = vec![0u8; chunk.max(1)];
    loop {
        let mut fds: Vec<libc::pollfd> = std::iter::once(listener.as_raw_fd())
            .chain(socks.keys().copied())
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if n < 0 {
            return Err(format!("poll: {}", std::io::Error::last_os_error()));
        }
        for p in fds.iter().filter(|p| p.revents != 0) {
            if p.fd == listener.as_raw_fd() {
                while let Ok((c, _)) = listener.accept() {
                    let u = TcpStream::connect(upstream).map_err(|e| format!("connecting {upstream}: {e}"))?;
                    let (cf, uf) = (c.as_raw_fd(), u.as_raw_fd());
                    partner.insert(cf, uf);
                    partner.insert(uf, cf);
                    upstreams.insert(uf);
                    socks.insert(cf, c);
                    socks.insert(uf, u);
                }
                continue;
            }
            let read = socks.get_mut(&p.fd).map_or(Ok(0), |s| s.read(&mut buf));
            match read {
                Ok(0) | Err(_) => {
                    socks.remove(&p.fd);
                    let was_upstream = upstreams.remove(&p.fd);
                    if let Some(other) = partner.remove(&p.fd) {
                        partner.remove(&other);
                        if was_upstream {
                            // The response is complete: the client's connection ends with it.
                            socks.remove(&other);
                        }
                    }
                }
                Ok(n) => {
                    if let Some(other) = partner.get(&p.fd).and_then(|o| socks.get_mut(o)) {
                        let _ = other.write_all(&buf[..n]);
                    }
                }
            }
        }
    }
}

#[derive(Default)]
struct Seen {
    bytes: u64,
    max_gap_ms: u64,
    error: Option<String>,
}

/// Connects through the proxy, asks for `to` (path `/stream/{id}`: a proxy fetches each client's
/// response for it, none is shared), reads for `stay`.
fn client(id: usize, proxy: SocketAddr, to: SocketAddr, http: bool, stay: Duration) -> Seen {
    let mut seen = Seen::default();
    let mut c = match TcpStream::connect(proxy) {
        Ok(c) => c,
        Err(e) => {
            seen.error = Some(format!("connect: {e}"));
            return seen;
        }
    };
    let request =
        if http { format!("GET http://{to}/stream/{id} HTTP/1.1\r\nHost: {to}\r\n\r\n") } else { format!("{to}\n") };
    if let Err(e) = c.write_all(request.as_bytes()) {
        seen.error = Some(format!("write: {e}"));
        return seen;
    }
    let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
    let (start, mut last) = (Instant::now(), None::<Instant>);
    let mut buf = [0u8; 65536];
    while start.elapsed() < stay {
        match c.read(&mut buf) {
            Ok(0) => {
                seen.error = Some("the proxy closed the connection".to_owned());
                break;
            }
            Ok(n) => {
                let now = Instant::now();
                if let Some(l) = last {
                    seen.max_gap_ms = seen.max_gap_ms.max(now.duration_since(l).as_millis() as u64);
                }
                (last, seen.bytes) = (Some(now), seen.bytes + n as u64);
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => {
                seen.error = Some(format!("read: {e}"));
                break;
            }
        }
    }
    // Silence up to the end counts as a gap too.
    if let Some(l) = last {
        seen.max_gap_ms = seen.max_gap_ms.max(l.elapsed().as_millis() as u64);
    }
    seen
}

fn clients(args: &[String]) -> Result<(), String> {
    let proxy: SocketAddr = value(args, "--proxy", None)?;
    let http = args.iter().any(|a| a == "--http");
    let live: usize = value(args, "--live", Some(0))?;
    let to = addrs(args, "--to")?;
    let churn_to = addrs(args, "--churn-to")?;
    let per_s: f64 = value(args, "--churn-per-s", Some(0.0))?;
    let churn_for = Duration::from_millis(value(args, "--churn-for-ms", Some(0))?);
    let stay = Duration::from_millis(value(args, "--stay-ms", Some(5000))?);
    let run = Duration::from_millis(value(args, "--run-ms", None)?);
    if live > 0 && to.is_empty() {
        return Err("--live needs --to".to_owned());
    }
    let live_threads: Vec<_> = (0..live)
        .map(|i| {
            let addr = to[i % to.len()];
            thread::spawn(move || (addr, client(i, proxy, addr, http, run)))
        })
        .collect();
    let churned: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let start = Instant::now();
    let mut churn_threads = Vec::new();
    if per_s > 0.0 && !churn_to.is_empty() {
        let every = Duration::from_secs_f64(1.0 / per_s);
        let mut k = 0usize;
        while start.elapsed() < churn_for {
            let addr = churn_to[k % churn_to.len()];
            let churned = churned.clone();
            churn_threads.push(thread::spawn(move || {
                let seen = client(live + k, proxy, addr, http, stay);
                let key = seen.error.unwrap_or_else(|| "ok".to_owned());
                *churned.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += 1;
            }));
            k += 1;
            thread::sleep(every.saturating_sub(Duration::from_micros(100)));
        }
    }
    let live: Vec<String> = live_threads
        .into_iter()
        .map(|t| {
            let (addr, s) =
                t.join().unwrap_or_else(|_| (proxy, Seen { error: Some("panicked".into()), ..Seen::default() }));
            format!(
                r#"{{"to":"{addr}","bytes":{},"max_gap_ms":{},"error":{}}}"#,
                s.bytes,
                s.max_gap_ms,
                s.error.map_or("null".to_owned(), |e| format!("{e:?}"))
            )
        })
        .collect();
    for t in churn_threads {
        let _ = t.join();
    }
    let churned = churned.lock().unwrap_or_else(|e| e.into_inner());
    let churned: Vec<String> = churned.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
    println!(r#"{{"live":[{}],"churn":{{{}}}}}"#, live.join(","), churned.join(","));
    Ok(())
}
