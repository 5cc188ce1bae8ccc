//! A scriptable TCP endpoint for the integration tests: real sockets, driven line by line on
//! stdin, one `ok …` or `err …` line per command on stdout.
//!
//! Commands (IDs number the connections, accepted and connected alike, from 0):
//!   listen ADDR [DEV]            listen and accept in the background; with DEV, the listener
//!                                is bound to that device (SO_BINDTODEVICE, which accepted
//!                                connections inherit)
//!   wait-accepted N              block until N connections were accepted (at most 45 s, then
//!                                `err`); `ok ID…`
//!   count                        how many IDs were handed out so far (`connect-every` takes
//!                                one per attempt, failed ones too); `ok N`
//!   connect ADDR [RCVBUF [SRC]]  connect, optionally with a small SO_RCVBUF (0: default) and
//!                                from source address SRC; `ok ID LOCAL`
//!   connect-many ADDR N [RCVBUF] N connections; `ok FIRST_ID`
//!   connect-every ADDR MS COUNT RCVBUF SRC [HOLD_MS [rotate]]
//!                                COUNT connections in the background, one every MS, never read;
//!                                an attempt that fails takes an ID with no connection. With
//!                                HOLD_MS > 0 each is reset by this side (SO_LINGER 0, close:
//!                                an RST) HOLD_MS after it was made. With `rotate`, each comes
//!                                from the address after the last one's (SRC, SRC+1, …; IPv6
//!                                sources are bound with IPV6_FREEBIND, for a prefix routed
//!                                `local` to lo)
//!   listen-write ADDR BYTES      listen; write BYTES (non-blocking) to each accepted connection
//!   sndbuf ID BYTES              SO_SNDBUFFORCE: let the connection queue BYTES (root)
//!   write-range FIRST N BYTES    `write` on N connections from FIRST; `ok TOTAL_WRITTEN`
//!   write ID BYTES               non-blocking write of up to BYTES; `ok WRITTEN`
//!   write-loop ID                write forever in the background (blocking)
//!   http-get ID PATH             send `GET PATH HTTP/1.1` (keep-alive, Host: the remote
//!                                address) and nothing else: a request to a real HTTP server
//!   read-loop ID BYTES MS [RUN_MS PAUSE_MS]
//!                                read up to BYTES every MS milliseconds in the background; with
//!                                RUN_MS and PAUSE_MS, reading for RUN_MS, then not at all for
//!                                PAUSE_MS, and again (a reader that pauses)
//!   received ID                  bytes `read-loop` read on the connection so far; `ok BYTES`
//!   write-every ID BYTES MS      write BYTES every MS in the background (blocking): responses
//!                                on a keep-alive connection
//!   outq ID                      bytes not yet acknowledged (SIOCOUTQ)
//!   addr ID                      `ok LOCAL REMOTE`
//!   close ID                     close the connection
//!   soerror ID                   the pending socket error (SO_ERROR): `ok ERRNO`, 0 if none
//!   sndbuf ID                    the send buffer (SO_SNDBUF, as the kernel reports it): `ok BYTES`
use std::{
    collections::HashMap,
    io::{BufRead, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd},
    sync::{
        Arc, Condvar, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

type Conns = Arc<(Mutex<Vec<Option<Arc<TcpStream>>>>, Condvar)>;

/// How long `wait-accepted` waits: less than the driver waits for any answer, so that the driver
/// fails with this peer's own message (what it waited for, what it had).
const ACCEPT_LIMIT: Duration = Duration::from_secs(45);

/// Lets this process hold as many connections as the kernel allows a process (root may raise
/// the hard limit): the default soft limit, 1024 in the VM legs' guest, is far below what
/// `connect-many` asks for.
fn raise_fd_limit() {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|t| t.trim().parse().ok());
    let want = libc::rlimit { rlim_cur: nr_open.unwrap_or(65536), rlim_max: nr_open.unwrap_or(65536) };
    // SAFETY: setrlimit/getrlimit with valid pointers to rlimit values on our stack.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            // Not root: up to the hard limit.
            let mut have = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut have) == 0 {
                have.rlim_cur = have.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &have);
            }
        }
    }
}

fn main() {
    raise_fd_limit();
    let conns: Conns = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match command(&conns, &words) {
            Ok(s) => format!("ok {s}"),
            Err(e) => format!("err {e}"),
        };
        if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
}

fn arg<T: std::str::FromStr>(words: &[&str], i: usize) -> Result<T, String> {
    words.get(i).ok_or(format!("missing argument {i}"))?.parse().map_err(|_| format!("bad argument {i}"))
}

fn add(conns: &Conns, s: Option<TcpStream>) -> usize {
    let (lock, cv) = &**conns;
    let mut v = lock.lock().unwrap_or_else(|e| e.into_inner());
    v.push(s.map(Arc::new));
    cv.notify_all();
    v.len() - 1
}

fn get(conns: &Conns, id: usize) -> Result<Arc<TcpStream>, String> {
    let v = conns.0.lock().unwrap_or_else(|e| e.into_inner());
    v.get(id).cloned().flatten().ok_or(format!("no connection {id}"))
}

/// Bytes each `read-loop` read, by connection ID.
fn received(id: usize) -> Arc<AtomicU64> {
    static RECEIVED: OnceLock<Mutex<HashMap<usize, Arc<AtomicU64>>>> = OnceLock::new();
    let map = RECEIVED.get_or_init(Mutex::default);
    map.lock().unwrap_or_else(|e| e.into_inner()).entry(id).or_default().clone()
}

/// The address `n` after `ip` (the next host of a rotating source).
fn nth_addr(ip: IpAddr, n: u32) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).wrapping_add(n).into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).wrapping_add(u128::from(n)).into()),
    }
}

/// Closes connection `id` with an RST: SO_LINGER with a zero timeout, then close (the last
/// reference goes with the slot).
fn reset(conns: &Conns, id: usize) {
    let taken = conns.0.lock().unwrap_or_else(|e| e.into_inner()).get_mut(id).and_then(Option::take);
    if let Some(s) = taken {
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        let len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
        // SAFETY: setsockopt reads one linger of the stated length from our stack.
        unsafe { libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&raw const linger).cast(), len) };
    }
}

fn connect(addr: SocketAddr, rcvbuf: Option<i32>, src: Option<std::net::IpAddr>) -> Result<TcpStream, String> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket syscalls on a descriptor we own; the stream takes ownership.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let stream = TcpStream::from_raw_fd(fd);
        if let Some(size) = rcvbuf.filter(|&s| s > 0) {
            // Before connect, so the advertised window is small from the start.
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&raw const size).cast(), 4);
        }
        if let Some(ip) = src {
            if ip.is_ipv6() {
                // Any address of a prefix routed `local` to lo, not only the device's own.
                let one: libc::c_int = 1;
                libc::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, (&raw const one).cast(), 4);
            }
            let (sa, len) = sockaddr(SocketAddr::new(ip, 0));
            if libc::bind(fd, (&raw const sa).cast(), len) != 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
        }
        let (sa, len) = sockaddr(addr);
        if libc::connect(fd, (&raw const sa).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(stream)
    }
}

/// A listener on `addr`, bound to device `dev` first when given.
fn listen(addr: SocketAddr, dev: Option<&str>) -> Result<TcpListener, String> {
    let Some(dev) = dev else {
        return TcpListener::bind(addr).map_err(|e| e.to_string());
    };
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let last = || std::io::Error::last_os_error().to_string();
    // SAFETY: plain socket syscalls on a descriptor we own; the listener takes ownership.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(last());
        }
        let listener = TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&raw const one).cast(), 4) != 0 {
            return Err(last());
        }
        if libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_ptr().cast(), dev.len() as u32) != 0 {
            return Err(format!("SO_BINDTODEVICE {dev}: {}", last()));
        }
        let (sa, len) = sockaddr(addr);
        if libc::bind(fd, (&raw const sa).cast(), len) != 0 || libc::listen(fd, 1024) != 0 {
            return Err(last());
        }
        Ok(listener)
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; we fill the variant we use.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = (&raw mut ss).cast::<libc::sockaddr_in>();
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
            unsafe {
                (*sin).sin_family = libc::AF_INET as u16;
                (*sin).sin_port = a.port().to_be();
                (*sin).sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            }
            (ss, std::mem::size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(a) => {
            let sin6 = (&raw mut ss).cast::<libc::sockaddr_in6>();
            // SAFETY: as above, for sockaddr_in6.
            unsafe {
                (*sin6).sin6_family = libc::AF_INET6 as u16;
                (*sin6).sin6_port = a.port().to_be();
                (*sin6).sin6_addr.s6_addr = a.ip().octets();
            }
            (ss, std::mem::size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

/// Writes up to `left` bytes without blocking; returns how many were queued.
fn write_some(s: &TcpStream, mut left: usize) -> Result<usize, String> {
    let err = |e: std::io::Error| e.to_string();
    s.set_nonblocking(true).map_err(err)?;
    let buf = vec![b'x'; 64 * 1024];
    let mut written = 0;
    while left > 0 {
        match (&*s).write(&buf[..left.min(buf.len())]) {
            Ok(n) => {
                written += n;
                left -= n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    s.set_nonblocking(false).map_err(err)?;
    Ok(written)
}

fn command(conns: &Conns, words: &[&str]) -> Result<String, String> {
    let err = |e: std::io::Error| e.to_string();
    match words.first().copied().unwrap_or("") {
        "listen" => {
            let l = listen(arg(words, 1)?, words.get(2).copied())?;
            let local = l.local_addr().map_err(err)?;
            let conns = conns.clone();
            thread::spawn(move || {
                for s in l.incoming().flatten() {
                    add(&conns, Some(s));
                }
            });
            Ok(local.to_string())
        }
        "wait-accepted" => {
            let n: usize = arg(words, 1)?;
            let (lock, cv) = &**conns;
            let mut v = lock.lock().unwrap_or_else(|e| e.into_inner());
            let deadline = Instant::now() + ACCEPT_LIMIT;
            while v.len() < n {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!("waited {ACCEPT_LIMIT:?} for {n} connections, have {}", v.len()));
                }
                v = cv.wait_timeout(v, left).unwrap_or_else(|e| e.into_inner()).0;
            }
            Ok((0..v.len()).map(|i| i.to_string()).collect::<Vec<_>>().join(" "))
        }
        "count" => Ok(conns.0.lock().unwrap_or_else(|e| e.into_inner()).len().to_string()),
        "connect" => {
            let s = connect(arg(words, 1)?, arg(words, 2).ok(), arg(words, 3).ok())?;
            let local = s.local_addr().map_err(err)?;
            Ok(format!("{} {local}", add(conns, Some(s))))
        }
        "connect-many" => {
            let (addr, n): (SocketAddr, usize) = (arg(words, 1)?, arg(words, 2)?);
            let rcvbuf = arg(words, 3).ok();
            let mut first = None;
            for _ in 0..n {
                let id = add(conns, Some(connect(addr, rcvbuf, None)?));
                first.get_or_insert(id);
            }
            Ok(first.map(|f| f.to_string()).unwrap_or_default())
        }
        "write" => Ok(write_some(&*get(conns, arg(words, 1)?)?, arg(words, 2)?)?.to_string()),
        "write-range" => {
            let (first, n, bytes): (usize, usize, usize) = (arg(words, 1)?, arg(words, 2)?, arg(words, 3)?);
            let mut total = 0;
            for id in first..first + n {
                total += write_some(&*get(conns, id)?, bytes)?;
            }
            Ok(total.to_string())
        }
        "write-loop" => {
            let s = get(conns, arg(words, 1)?)?;
            thread::spawn(move || {
                let buf = vec![b'x'; 64 * 1024];
                while (&*s).write_all(&buf).is_ok() {}
            });
            Ok(String::new())
        }
        "http-get" => {
            let s = get(conns, arg(words, 1)?)?;
            let path: String = arg(words, 2)?;
            let host = s.peer_addr().map_err(err)?;
            let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
            (&*s).write_all(request.as_bytes()).map_err(err)?;
            Ok(String::new())
        }
        "read-loop" => {
            let id = arg(words, 1)?;
            let s = get(conns, id)?;
            let (bytes, ms): (usize, u64) = (arg(words, 2)?, arg(words, 3)?);
            // Reading for `run`, then pausing for `pause`, when both are given.
            let cycle: Option<(u64, u64)> = arg(words, 4).ok().zip(arg(words, 5).ok());
            let counter = received(id);
            thread::spawn(move || {
                let mut buf = vec![0u8; bytes];
                let start = Instant::now();
                loop {
                    if let Some((run, pause)) = cycle {
                        let into = start.elapsed().as_millis() as u64 % (run + pause);
                        if into >= run {
                            thread::sleep(Duration::from_millis(run + pause - into));
                        }
                    }
                    match (&*s).read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                            thread::sleep(Duration::from_millis(ms));
                        }
                    }
                }
            });
            Ok(String::new())
        }
        "received" => Ok(received(arg(words, 1)?).load(Ordering::Relaxed).to_string()),
        "write-every" => {
            let s = get(conns, arg(words, 1)?)?;
            let (bytes, ms): (usize, u64) = (arg(words, 2)?, arg(words, 3)?);
            thread::spawn(move || {
                let buf = vec![b'x'; bytes];
                while (&*s).write_all(&buf).is_ok() {
                    thread::sleep(Duration::from_millis(ms));
                }
            });
            Ok(String::new())
        }
        "outq" => {
            let s = get(conns, arg(words, 1)?)?;
            let mut n: libc::c_int = 0;
            // SAFETY: TIOCOUTQ writes one int.
            if unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) } != 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
            Ok(n.to_string())
        }
        "addr" => {
            let s = get(conns, arg(words, 1)?)?;
            Ok(format!("{} {}", s.local_addr().map_err(err)?, s.peer_addr().map_err(err)?))
        }
        "close" => {
            let id: usize = arg(words, 1)?;
            let mut v = conns.0.lock().unwrap_or_else(|e| e.into_inner());
            let s = v.get_mut(id).and_then(Option::take).ok_or(format!("no connection {id}"))?;
            // Shut down now even if a background thread still holds the stream.
            let _ = s.shutdown(std::net::Shutdown::Both);
            Ok(String::new())
        }
        "sndbuf" if words.len() > 2 => {
            let s = get(conns, arg(words, 1)?)?;
            let bytes: libc::c_int = arg(words, 2)?;
            // SO_SNDBUFFORCE, past wmem_max: a server that queues many megabytes (root only).
            // SAFETY: setsockopt reads one int.
            let rc = unsafe {
                libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, (&raw const bytes).cast(), 4)
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
            Ok(String::new())
        }
        "sndbuf" => {
            let s = get(conns, arg(words, 1)?)?;
            let mut n: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: SO_SNDBUF writes one int of the stated length.
            let rc = unsafe {
                libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, (&raw mut n).cast(), &mut len)
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
            Ok(n.to_string())
        }
        "usertimeout" => {
            // TCP_USER_TIMEOUT in ms (0: the kernel's retries decide).
            let s = get(conns, arg(words, 1)?)?;
            let mut n: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: TCP_USER_TIMEOUT writes one int of the stated length.
            let rc = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_USER_TIMEOUT,
                    (&raw mut n).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
            Ok(n.to_string())
        }
        "soerror" => {
            let s = get(conns, arg(words, 1)?)?;
            Ok(s.take_error().map_err(err)?.and_then(|e| e.raw_os_error()).unwrap_or(0).to_string())
        }
        "listen-write" => {
            // A server that answers every connection with BYTES at once (a large response) and
            // never reads: what a zero-window attacker asks for.
            let l = TcpListener::bind(arg::<SocketAddr>(words, 1)?).map_err(err)?;
            let bytes: usize = arg(words, 2)?;
            let local = l.local_addr().map_err(err)?;
            let conns = conns.clone();
            thread::spawn(move || {
                for s in l.incoming().flatten() {
                    let _ = write_some(&s, bytes);
                    add(&conns, Some(s));
                }
            });
            Ok(local.to_string())
        }
        "connect-every" => {
            // In the background: COUNT connections, one every MS, from SRC with SO_RCVBUF RCVBUF,
            // never read (a churning attacker), each reset after HOLD_MS if given, from a new
            // source each time with `rotate`. `ok` at once.
            let (addr, ms, count): (SocketAddr, u64, u32) = (arg(words, 1)?, arg(words, 2)?, arg(words, 3)?);
            let (rcvbuf, src): (Option<i32>, Option<IpAddr>) = (arg(words, 4).ok(), arg(words, 5).ok());
            let hold: u64 = arg(words, 6).unwrap_or(0);
            let rotate = match words.get(7) {
                None => false,
                Some(&"rotate") => true,
                Some(w) => return Err(format!("`{w}`: only `rotate` may follow HOLD_MS")),
            };
            let conns = conns.clone();
            // Resets, in the order the connections were made (they share HOLD_MS).
            let (to_reset, due) = std::sync::mpsc::channel::<(Instant, usize)>();
            if hold > 0 {
                let conns = conns.clone();
                thread::spawn(move || {
                    for (at, id) in due {
                        thread::sleep(at.saturating_duration_since(Instant::now()));
                        reset(&conns, id);
                    }
                });
            }
            thread::spawn(move || {
                let start = Instant::now();
                for i in 0..count {
                    let from = src.map(|ip| if rotate { nth_addr(ip, i) } else { ip });
                    let id = add(&conns, connect(addr, rcvbuf, from).ok());
                    if hold > 0 {
                        let _ = to_reset.send((Instant::now() + Duration::from_millis(hold), id));
                    }
                    // On a schedule: a slow connect does not slow the rate.
                    let next = start + Duration::from_millis(ms * u64::from(i + 1));
                    thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            });
            Ok(String::new())
        }
        other => Err(format!("unknown command {other:?}")),
    }
}
