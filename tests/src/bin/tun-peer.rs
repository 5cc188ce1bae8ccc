//! A scripted TCP peer for the integration tests: a user-space TCP endpoint on a tun device in a
//! test's network namespace, playing remote hosts against kernel TCP servers. A kernel client
//! cannot choose its ACK numbers or windows; this one sends exactly what the test scripts, so a
//! test can shape the send queue a server holds.
//!
//! Usage: `tun-peer [ADDR/PREFIX]` (default 10.77.0.1/24), inside a test namespace only: it
//! refuses a namespace with any interface but loopback and other tun-peers'. It creates a tun
//! device, gives it ADDR (the kernel's side, where servers listen) and brings it up, then prints
//! `ok DEVICE`. Every other host address of the subnet is the peer's.
//!
//! Commands on stdin, one `ok …` or `err …` line each on stdout (IDs number connections from 0):
//!   connect SRC DST:PORT WINDOW WSCALE|none [MSS]
//!                            handshake from SRC:ephemeral to the kernel (DST is ADDR), offering
//!                            MSS (1460) and the window scale shift WSCALE (none: no option),
//!                            no SACK, no timestamps; advertises WINDOW bytes; `ok ID SRC:PORT`
//!   window ID BYTES          advertise BYTES from now on (0 allowed) and send a window update
//!   ack ID all               ACK each in-order segment at once (the mode after connect)
//!   ack ID none              never advance the ACK number
//!   ack ID burst BYTES MS    every MS ms advance the ACK number by BYTES, never past what arrived
//!   stats ID                 `ok ACKED RECEIVED SEGMENTS STATE`: bytes acknowledged, bytes received
//!                            in order, data segments seen (retransmissions too), and one of
//!                            syn_sent, established, closed (the server sent FIN), reset
//!   send ID BYTES            send up to BYTES of payload within the server's window; `ok SENT`
//!   hole ID BYTES            never send the next BYTES: what `send` sends from now on lies
//!                            beyond a hole, and the server holds it out of order
//!   rst ID                   send an RST and forget the connection
//!
//! It stores no payload: it keeps the next in-order sequence number and counts. Whatever the ACK
//! mode, a segment that carries data or a FIN, or is out of order (a zero-window probe or a
//! retransmission), gets an ACK with the current ACK number and window, as a real stack answers;
//! in-order pure ACKs get none. Out-of-order data is dropped, and the peer never retransmits
//! what it sends. A smaller nonzero `window` takes effect at the next ACK that advances: the
//! kernel ignores a shrinking window on a duplicate ACK.
use std::{
    ffi::CStr,
    fs::File,
    io::{BufRead, Read, Write},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
    process::Command,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

const IP_HEADER: usize = 20;
const TCP_HEADER: usize = 20;
/// `connect` sends its SYN again after this long without an answer, up to `SYN_TRIES` times.
const SYN_RETRY: Duration = Duration::from_millis(500);
const SYN_TRIES: u32 = 6;
/// The event loop wakes at least this often, so a burst timer a command sets starts on time.
const TICK: Duration = Duration::from_millis(10);
/// Ephemeral ports of our connections, whatever the source address.
const FIRST_PORT: u16 = 40000;

fn main() {
    let subnet = match std::env::args().nth(1).map_or(Ok(Subnet::DEFAULT), |a| Subnet::parse(&a)) {
        Ok(s) => s,
        Err(e) => fail(&e),
    };
    let (tun, dev) = match setup(subnet) {
        Ok(t) => t,
        Err(e) => fail(&e),
    };
    let reader = match tun.try_clone() {
        Ok(r) => r,
        Err(e) => fail(&format!("dup tun: {e}")),
    };
    let shared = Arc::new(Shared {
        peer: Mutex::new(Peer { tun, subnet, conns: Vec::new(), next_port: FIRST_PORT }),
        changed: Condvar::new(),
    });
    let events = shared.clone();
    thread::spawn(move || event_loop(&events, reader));

    let mut out = std::io::stdout();
    if writeln!(out, "ok {dev}").and_then(|()| out.flush()).is_err() {
        return;
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match command(&shared, &words) {
            Ok(s) => format!("ok {s}"),
            Err(e) => format!("err {e}"),
        };
        if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    // Stdin closed: the driver is gone. Exiting closes the tun, which removes the device.
}

/// Start-up failed: say why on the line the driver waits for, and exit.
fn fail(e: &str) -> ! {
    println!("err {e}");
    std::process::exit(1);
}

/// The tun's subnet. `kernel` is the tun's own address, the kernel's side; every other host
/// address is one the peer can play.
#[derive(Clone, Copy)]
struct Subnet {
    kernel: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    const DEFAULT: Self = Self { kernel: Ipv4Addr::new(10, 77, 0, 1), prefix: 24 };

    fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("bad subnet {s:?}: want ADDR/PREFIX, PREFIX 8..=30");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let subnet = Self { kernel: addr.parse().map_err(|_| bad())?, prefix: prefix.parse().map_err(|_| bad())? };
        if !(8..=30).contains(&subnet.prefix) {
            return Err(bad());
        }
        Ok(subnet)
    }

    fn mask(self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// Whether the peer may use `ip`: in the subnet, neither the kernel's address nor the network
    /// or broadcast address.
    fn is_peer_host(self, ip: Ipv4Addr) -> bool {
        let (ip, net, mask) = (u32::from(ip), u32::from(self.kernel) & self.mask(), self.mask());
        ip & mask == net && ip != u32::from(self.kernel) && ip != net && ip != net | !mask
    }
}

/// Checks the namespace, creates the tun and configures it: `(tun, device name)`.
fn setup(subnet: Subnet) -> Result<(File, String), String> {
    check_namespace()?;
    let (tun, dev) = open_tun()?;
    let cidr = format!("{}/{}", subnet.kernel, subnet.prefix);
    ip(&["addr", "add", &cidr, "dev", &dev])?;
    // A deep device queue: the tun drops what does not fit while we are not reading, and a
    // server with a large congestion window sends hundreds of segments at once.
    ip(&["link", "set", &dev, "txqueuelen", "4096", "up"])?;
    Ok((tun, dev))
}

/// The tun, its address and its route belong in a test's namespace: one with nothing but
/// loopback (and the tun devices of earlier tun-peers), never the machine's own.
fn check_namespace() -> Result<(), String> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns an array ended by a zero entry, or null; freed once, below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Err(format!("if_nameindex: {}", std::io::Error::last_os_error()));
        }
        let mut entry = list;
        while (*entry).if_index != 0 {
            names.push(CStr::from_ptr((*entry).if_name).to_string_lossy().into_owned());
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    match names.iter().find(|n| *n != "lo" && !n.starts_with("tunpeer")) {
        Some(n) => Err(format!("interface {n} here: not a test namespace, refusing to add a tun")),
        None => Ok(()),
    }
}

/// `struct ifreq` as TUNSETIFF uses it: the name, then the flags (the union's first member).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

/// A layer 3 tun (IPv4 packets as they are, no packet info header), named by the kernel.
fn open_tun() -> Result<(File, String), String> {
    let tun = File::options().read(true).write(true).open("/dev/net/tun").map_err(|e| format!("/dev/net/tun: {e}"))?;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: (libc::IFF_TUN | libc::IFF_NO_PI) as i16, _rest: [0; 22] };
    req.name[..9].copy_from_slice(b"tunpeer%d");
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `req` has the size and layout of.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &raw mut req) } != 0 {
        return Err(format!("TUNSETIFF: {}", std::io::Error::last_os_error()));
    }
    let len = req.name.iter().position(|&b| b == 0).unwrap_or(libc::IFNAMSIZ);
    Ok((tun, String::from_utf8_lossy(&req.name[..len]).into_owned()))
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Wire format: IPv4 and TCP headers, checksums, options.

/// What the peer uses of a received IPv4 TCP segment.
struct Segment {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ack: u32,
    flags: u8,
    /// The raw window field (scaled by the sender's shift, except in a SYN).
    window: u16,
    mss: Option<u16>,
    wscale: Option<u8>,
    len: u32,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an IPv4 TCP segment; anything else (IPv6, other protocols, fragments, truncated
/// packets) is `None`. Checksums are not verified: the kernel computed them, and a tun without
/// offloads gets complete ones.
fn parse(pkt: &[u8]) -> Option<Segment> {
    if pkt.len() < IP_HEADER || pkt[0] >> 4 != 4 || pkt[9] != libc::IPPROTO_TCP as u8 {
        return None;
    }
    // More fragments, or a fragment offset: the kernel does not fragment TCP, so not ours.
    if be16(pkt, 6) & 0x3fff != 0 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(be16(pkt, 2)).min(pkt.len());
    let tcp = pkt.get(ihl..total)?;
    if tcp.len() < TCP_HEADER {
        return None;
    }
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    let (mss, wscale) = parse_options(tcp.get(TCP_HEADER..data_offset)?);
    let ip4 = |at: usize| Ipv4Addr::new(pkt[at], pkt[at + 1], pkt[at + 2], pkt[at + 3]);
    Some(Segment {
        src: SocketAddrV4::new(ip4(12), be16(tcp, 0)),
        dst: SocketAddrV4::new(ip4(16), be16(tcp, 2)),
        seq: be32(tcp, 4),
        ack: be32(tcp, 8),
        flags: tcp[13],
        window: be16(tcp, 14),
        mss,
        wscale,
        len: (tcp.len() - data_offset) as u32,
    })
}

/// The MSS and window scale options, the only ones the peer acts on.
fn parse_options(mut opts: &[u8]) -> (Option<u16>, Option<u8>) {
    let (mut mss, mut wscale) = (None, None);
    while let Some(&kind) = opts.first() {
        match kind {
            0 => break,
            1 => opts = &opts[1..],
            _ => {
                let len = usize::from(*opts.get(1).unwrap_or(&0));
                let Some(opt) = opts.get(..len).filter(|_| len >= 2) else { break };
                match (kind, len) {
                    (2, 4) => mss = Some(be16(opt, 2)),
                    (3, 3) => wscale = Some(opt[2]),
                    _ => {}
                }
                opts = &opts[len..];
            }
        }
    }
    (mss, wscale)
}

/// An outgoing segment; the payload is `payload` bytes of filler.
struct Out<'a> {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: &'a [u8],
    payload: usize,
}

/// The IPv4 packet of a segment, with both checksums.
fn build(o: &Out) -> Vec<u8> {
    let tcp_len = TCP_HEADER + o.options.len() + o.payload;
    let total = IP_HEADER + tcp_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45; // version 4, 5 words of header
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // don't fragment: the id can stay 0
    p[8] = 64; // TTL
    p[9] = libc::IPPROTO_TCP as u8;
    p[12..16].copy_from_slice(&o.src.ip().octets());
    p[16..20].copy_from_slice(&o.dst.ip().octets());
    let ip_sum = checksum(&p[..IP_HEADER], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());

    let t = &mut p[IP_HEADER..];
    t[0..2].copy_from_slice(&o.src.port().to_be_bytes());
    t[2..4].copy_from_slice(&o.dst.port().to_be_bytes());
    t[4..8].copy_from_slice(&o.seq.to_be_bytes());
    t[8..12].copy_from_slice(&o.ack.to_be_bytes());
    t[12] = (((TCP_HEADER + o.options.len()) / 4) as u8) << 4;
    t[13] = o.flags;
    t[14..16].copy_from_slice(&o.window.to_be_bytes());
    t[TCP_HEADER..TCP_HEADER + o.options.len()].copy_from_slice(o.options);
    t[TCP_HEADER + o.options.len()..].fill(b'x');
    // The pseudo-header: addresses, protocol, TCP length.
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&o.src.ip().octets());
    pseudo[4..8].copy_from_slice(&o.dst.ip().octets());
    pseudo[9] = libc::IPPROTO_TCP as u8;
    pseudo[10..12].copy_from_slice(&(tcp_len as u16).to_be_bytes());
    let tcp_sum = checksum(t, sum16(&pseudo, 0));
    t[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// Adds `data` as big-endian 16-bit words (an odd last byte padded with zero) to `acc`.
fn sum16(data: &[u8], acc: u32) -> u32 {
    data.chunks(2).fold(acc, |acc, w| acc + u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
}

/// The Internet checksum of `data`, continuing the sum `acc`.
fn checksum(data: &[u8], acc: u32) -> u16 {
    let mut sum = sum16(data, acc);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `a` is after `b` in sequence space (modulo 2^32).
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

// ---------------------------------------------------------------------------------------------
// Connections.

#[derive(Clone, Copy, PartialEq)]
enum State {
    SynSent,
    Established,
    /// The server sent its FIN (we do not close our side).
    Closed,
    Reset,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::SynSent => "syn_sent",
            State::Established => "established",
            State::Closed => "closed",
            State::Reset => "reset",
        }
    }
}

#[derive(Clone, Copy)]
enum AckMode {
    All,
    None,
    Burst { bytes: u32, every: Duration, next: Instant },
}

/// One connection, from the peer's side: "snd" is what we send, "rcv" what the server sends.
struct Conn {
    ours: SocketAddrV4,
    server: SocketAddrV4,
    state: State,
    /// Our initial sequence number, our next one, and the oldest the server has not acknowledged.
    iss: u32,
    snd_nxt: u32,
    snd_una: u32,
    /// The server's window in bytes, and its scale shift.
    snd_wnd: u32,
    snd_shift: u8,
    /// The server's initial sequence number and the next in-order one we expect.
    irs: u32,
    rcv_nxt: u32,
    fin_received: bool,
    /// The ACK number we send: rcv_nxt in `ack all` mode, behind it in the others.
    ack: u32,
    /// The window we advertise, in bytes.
    window: u32,
    /// The shift we offered in our SYN, and the one in force (0 unless both sides offered one).
    offered_shift: Option<u8>,
    rcv_shift: u8,
    mss: u16,
    mode: AckMode,
    segments: u64,
}

impl Conn {
    fn out(&self, flags: u8, options: &[u8], payload: usize) -> Vec<u8> {
        build(&Out {
            src: self.ours,
            dst: self.server,
            seq: self.snd_nxt,
            ack: if flags & ACK != 0 { self.ack } else { 0 },
            flags,
            window: self.window_field(flags & SYN != 0),
            options,
            payload,
        })
    }

    /// The window field: bytes, shifted after the handshake (never in a SYN), at most 65535.
    fn window_field(&self, syn: bool) -> u16 {
        let shift = if syn { 0 } else { self.rcv_shift };
        (self.window >> shift).min(u32::from(u16::MAX)) as u16
    }

    fn syn(&self) -> Vec<u8> {
        let mut options = vec![2, 4];
        options.extend_from_slice(&self.mss.to_be_bytes());
        if let Some(shift) = self.offered_shift {
            options.extend_from_slice(&[1, 3, 3, shift]); // NOP, window scale
        }
        self.out(SYN, &options, 0)
    }

    fn ack_packet(&self) -> Vec<u8> {
        self.out(ACK, &[], 0)
    }

    /// Handles one segment from the server; returns the packet to answer with, if any.
    fn on_segment(&mut self, seg: &Segment) -> Option<Vec<u8>> {
        if seg.flags & RST != 0 {
            self.state = State::Reset;
            return None;
        }
        match self.state {
            State::SynSent => self.on_syn_ack(seg),
            State::Established | State::Closed => self.on_synchronized(seg),
            State::Reset => None,
        }
    }

    fn on_syn_ack(&mut self, seg: &Segment) -> Option<Vec<u8>> {
        if seg.flags & (SYN | ACK) != SYN | ACK || seg.ack != self.iss.wrapping_add(1) {
            return None;
        }
        self.snd_nxt = seg.ack;
        self.snd_una = seg.ack;
        self.irs = seg.seq;
        self.rcv_nxt = seg.seq.wrapping_add(1);
        self.ack = self.rcv_nxt;
        // Scaling is on only if both SYNs carried the option; a SYN's own window is unscaled.
        if let (Some(ours), Some(theirs)) = (self.offered_shift, seg.wscale) {
            self.rcv_shift = ours;
            self.snd_shift = theirs.min(14);
        }
        self.snd_wnd = u32::from(seg.window);
        if let Some(mss) = seg.mss {
            self.mss = self.mss.min(mss);
        }
        self.state = State::Established;
        Some(self.ack_packet())
    }

    fn on_synchronized(&mut self, seg: &Segment) -> Option<Vec<u8>> {
        if seg.flags & SYN != 0 {
            // The SYN-ACK again: our handshake ACK was lost.
            return Some(self.ack_packet());
        }
        if seg.flags & ACK != 0 {
            if after(seg.ack, self.snd_una) && !after(seg.ack, self.snd_nxt) {
                self.snd_una = seg.ack;
            }
            self.snd_wnd = u32::from(seg.window) << self.snd_shift;
        }
        let in_order_pure_ack = seg.len == 0 && seg.flags & FIN == 0 && seg.seq == self.rcv_nxt;
        if seg.len > 0 {
            self.segments += 1;
        }
        let end = seg.seq.wrapping_add(seg.len);
        // New data that starts at or before rcv_nxt extends it; data past a gap is dropped.
        if !after(seg.seq, self.rcv_nxt) && after(end, self.rcv_nxt) {
            self.rcv_nxt = end;
        }
        if seg.flags & FIN != 0 && end == self.rcv_nxt && !self.fin_received {
            self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
            self.fin_received = true;
            self.state = State::Closed;
        }
        if matches!(self.mode, AckMode::All) {
            self.ack = self.rcv_nxt;
        }
        (!in_order_pure_ack).then(|| self.ack_packet())
    }

    /// Runs a due burst: the ACK number advances by the burst, at most to rcv_nxt. Returns the
    /// ACK to send if it advanced.
    fn on_timer(&mut self, now: Instant) -> Option<Vec<u8>> {
        let AckMode::Burst { bytes, every, next } = &mut self.mode else { return None };
        if now < *next || !matches!(self.state, State::Established | State::Closed) {
            return None;
        }
        // One burst per period; after a stall the schedule restarts rather than catching up.
        *next += *every;
        if *next <= now {
            *next = now + *every;
        }
        let target = self.ack.wrapping_add(*bytes);
        let new_ack = if after(target, self.rcv_nxt) { self.rcv_nxt } else { target };
        if new_ack == self.ack {
            return None;
        }
        self.ack = new_ack;
        Some(self.ack_packet())
    }

    fn next_timer(&self) -> Option<Instant> {
        match self.mode {
            AckMode::Burst { next, .. } => Some(next),
            _ => None,
        }
    }

    /// Bytes received in order (the FIN takes a sequence number but is no byte).
    fn received(&self) -> u32 {
        match self.state {
            State::SynSent => 0,
            _ => self.rcv_nxt.wrapping_sub(self.irs).wrapping_sub(1 + u32::from(self.fin_received)),
        }
    }

    fn acked(&self) -> u32 {
        match self.state {
            State::SynSent => 0,
            _ => self.ack.wrapping_sub(self.irs).wrapping_sub(1).min(self.received()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The peer: connections, the tun, the event loop.

struct Peer {
    tun: File,
    subnet: Subnet,
    /// Indexed by ID; `None` once reset by `rst`.
    conns: Vec<Option<Conn>>,
    next_port: u16,
}

impl Peer {
    fn send(&self, pkt: &[u8]) {
        // One write is one packet. A failed write is a lost packet, which TCP survives.
        if let Err(e) = (&self.tun).write(pkt) {
            eprintln!("tun-peer: tun write: {e}");
        }
    }

    fn conn(&mut self, id: usize) -> Result<&mut Conn, String> {
        self.conns.get_mut(id).and_then(Option::as_mut).ok_or(format!("no connection {id}"))
    }

    fn on_packet(&mut self, pkt: &[u8]) {
        let Some(seg) = parse(pkt) else { return };
        let found = self.conns.iter_mut().flatten().find(|c| c.ours == seg.dst && c.server == seg.src);
        if let Some(reply) = found.and_then(|c| c.on_segment(&seg)) {
            self.send(&reply);
        }
    }

    fn on_timers(&mut self, now: Instant) {
        let due: Vec<Vec<u8>> = self.conns.iter_mut().flatten().filter_map(|c| c.on_timer(now)).collect();
        for pkt in due {
            self.send(&pkt);
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.conns.iter().flatten().filter_map(Conn::next_timer).min()
    }
}

struct Shared {
    peer: Mutex<Peer>,
    /// Signalled after every packet handled, for `connect` waiting on its handshake.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Peer> {
        self.peer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads the tun and runs timers, forever: one thread, so segments are answered in order.
fn event_loop(shared: &Shared, mut tun: File) {
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        let wait = shared.lock().next_timer().map_or(TICK, |t| t.saturating_duration_since(now).min(TICK));
        let mut pfd = libc::pollfd { fd: tun.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd, valid for the call.
        let ready = unsafe { libc::poll(&raw mut pfd, 1, wait.as_millis() as i32) };
        if ready > 0 && pfd.revents & libc::POLLIN != 0 {
            match tun.read(&mut buf) {
                Ok(n) => {
                    shared.lock().on_packet(&buf[..n]);
                    shared.changed.notify_all();
                }
                Err(e) => eprintln!("tun-peer: tun read: {e}"),
            }
        }
        shared.lock().on_timers(Instant::now());
    }
}

// ---------------------------------------------------------------------------------------------
// Commands.

fn arg<T: std::str::FromStr>(words: &[&str], i: usize) -> Result<T, String> {
    words.get(i).ok_or(format!("missing argument {i}"))?.parse().map_err(|_| format!("bad argument {i}"))
}

fn command(shared: &Shared, words: &[&str]) -> Result<String, String> {
    match words.first().copied().unwrap_or("") {
        "connect" => connect(shared, words),
        "window" => {
            let mut peer = shared.lock();
            let conn = peer.conn(arg(words, 1)?)?;
            conn.window = arg(words, 2)?;
            let update = (conn.state != State::SynSent).then(|| conn.ack_packet());
            if let Some(pkt) = update {
                peer.send(&pkt);
            }
            Ok(String::new())
        }
        "ack" => set_ack_mode(shared, words),
        "stats" => {
            let mut peer = shared.lock();
            let c = peer.conn(arg(words, 1)?)?;
            Ok(format!("{} {} {} {}", c.acked(), c.received(), c.segments, c.state.name()))
        }
        "send" => send(shared, arg(words, 1)?, arg(words, 2)?),
        "hole" => {
            let mut peer = shared.lock();
            let conn = peer.conn(arg(words, 1)?)?;
            let bytes: u32 = arg(words, 2)?;
            conn.snd_nxt = conn.snd_nxt.wrapping_add(bytes);
            Ok(String::new())
        }
        "rst" => {
            let mut peer = shared.lock();
            let id: usize = arg(words, 1)?;
            let conn = peer.conns.get_mut(id).and_then(Option::take).ok_or(format!("no connection {id}"))?;
            peer.send(&conn.out(RST | ACK, &[], 0));
            Ok(String::new())
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

/// `connect SRC DST:PORT WINDOW WSCALE|none [MSS]`: sends the SYN and waits for the handshake.
fn connect(shared: &Shared, words: &[&str]) -> Result<String, String> {
    let (src, dst, window): (Ipv4Addr, SocketAddrV4, u32) = (arg(words, 1)?, arg(words, 2)?, arg(words, 3)?);
    let offered_shift = match words.get(4).copied() {
        Some("none") => None,
        Some(_) => Some(arg::<u8>(words, 4)?).filter(|&s| s <= 14).map(Some).ok_or("WSCALE is 0..=14 or none")?,
        None => return Err("missing argument 4".into()),
    };
    let mss = if words.len() > 5 { arg(words, 5)? } else { 1460 };
    let id = {
        let mut peer = shared.lock();
        if !peer.subnet.is_peer_host(src) {
            return Err(format!("{src} is not a peer address of the tun's subnet"));
        }
        if *dst.ip() != peer.subnet.kernel {
            return Err(format!("{dst} is not on the kernel's side ({})", peer.subnet.kernel));
        }
        let port = peer.next_port;
        peer.next_port = if port == u16::MAX { FIRST_PORT } else { port + 1 };
        let iss = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let conn = Conn {
            ours: SocketAddrV4::new(src, port),
            server: dst,
            state: State::SynSent,
            iss,
            snd_nxt: iss,
            snd_una: iss,
            snd_wnd: 0,
            snd_shift: 0,
            irs: 0,
            rcv_nxt: 0,
            fin_received: false,
            ack: 0,
            window,
            offered_shift,
            rcv_shift: 0,
            mss,
            mode: AckMode::All,
            segments: 0,
        };
        peer.conns.push(Some(conn));
        peer.conns.len() - 1
    };
    wait_handshake(shared, id)
}

/// Sends the SYN (again every `SYN_RETRY`) until the handshake completes or fails.
fn wait_handshake(shared: &Shared, id: usize) -> Result<String, String> {
    let mut peer = shared.lock();
    for _ in 0..SYN_TRIES {
        let syn = peer.conn(id)?.syn();
        peer.send(&syn);
        let deadline = Instant::now() + SYN_RETRY;
        loop {
            let conn = peer.conn(id)?;
            match conn.state {
                State::SynSent => {}
                State::Reset => return Err(format!("{} refused the connection", conn.server)),
                _ => return Ok(format!("{id} {}", conn.ours)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            peer = shared.changed.wait_timeout(peer, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
    peer.conns[id] = None;
    Err("no SYN-ACK".into())
}

fn set_ack_mode(shared: &Shared, words: &[&str]) -> Result<String, String> {
    let mut peer = shared.lock();
    let conn = peer.conn(arg(words, 1)?)?;
    conn.mode = match words.get(2).copied() {
        Some("all") => AckMode::All,
        Some("none") => AckMode::None,
        Some("burst") => {
            let (bytes, ms): (u32, u64) = (arg(words, 3)?, arg(words, 4)?);
            if ms == 0 {
                return Err("MS must be positive".into());
            }
            let every = Duration::from_millis(ms);
            AckMode::Burst { bytes, every, next: Instant::now() + every }
        }
        _ => return Err("want all, none or burst BYTES MS".into()),
    };
    // `all` acknowledges what already arrived at once.
    if matches!(conn.mode, AckMode::All) && conn.state != State::SynSent && conn.ack != conn.rcv_nxt {
        conn.ack = conn.rcv_nxt;
        let pkt = conn.ack_packet();
        peer.send(&pkt);
    }
    Ok(String::new())
}

/// Sends up to `bytes` of payload in MSS-sized segments, as far as the server's window allows.
fn send(shared: &Shared, id: usize, bytes: u32) -> Result<String, String> {
    let mut peer = shared.lock();
    let conn = peer.conn(id)?;
    if !matches!(conn.state, State::Established | State::Closed) {
        return Err(format!("connection {id} is {}", conn.state.name()));
    }
    let room = conn.snd_una.wrapping_add(conn.snd_wnd).wrapping_sub(conn.snd_nxt);
    let total = bytes.min(if room > i32::MAX as u32 { 0 } else { room });
    let mut packets = Vec::new();
    let mut left = total;
    while left > 0 {
        let len = left.min(u32::from(conn.mss.max(1)));
        packets.push(conn.out(ACK | PSH, &[], len as usize));
        conn.snd_nxt = conn.snd_nxt.wrapping_add(len);
        left -= len;
    }
    for pkt in packets {
        peer.send(&pkt);
    }
    Ok(total.to_string())
}
