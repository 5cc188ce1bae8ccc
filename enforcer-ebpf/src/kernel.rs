//! Reading kernel structures at offsets found in BTF at load time.
use aya_ebpf::helpers::generated::bpf_probe_read_kernel;
use enforcer_common::{KernelOffsets, WatchConfig};

/// Overridden by the loader with offsets from `/sys/kernel/btf/vmlinux`. In `.rodata`, frozen
/// after load, so the verifier treats every field as a constant.
#[unsafe(no_mangle)]
pub static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    sk_cookie: 0,
    sk_state: 0,
    sk_wmem_queued: 0,
    sk_cgroup: 0,
    cgroup_kn: 0,
    kn_id: 0,
    tp_snd_una: 0,
    tp_snd_nxt: 0,
    tp_write_seq: 0,
    tp_rcv_nxt: 0,
    tp_copied_seq: 0,
    tp_snd_wnd: 0,
    tp_total_retrans: 0,
    tp_total_rto: 0,
    tp_bytes_acked: 0,
    tp_bytes_received: 0,
    skc_family: 0,
    skc_num: 0,
    skc_dport: 0,
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_bound_dev_if: 0,
    cgroup_level: 0,
    cgroup_ancestors: 0,
    skc_net: 0,
    net_inum: 0,
    socket_sk: 0,
    task_tgid: 0,
    task_comm: 0,
    tp_srtt_us: 0,
    tp_rttvar_us: 0,
    sk_rmem_alloc: 0,
    tp_ofo_queue: 0,
};

/// Overridden by the loader: the watched cgroup (see `WatchConfig`).
#[unsafe(no_mangle)]
pub static WATCH: WatchConfig = WatchConfig { cgroup_id: 0, cgroup_level: 0, adopt: 0, fault: 0, proxy: 0 };

/// One offset, read volatile so the compiler cannot fold it to the zero above.
macro_rules! off {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        // SAFETY: a plain read of a static.
        let v = unsafe { core::ptr::read_volatile(&raw const $crate::kernel::KERNEL_OFFSETS.$field) };
        v
    }};
}
pub(crate) use off;

/// One field of `WATCH`, read volatile like `off!`.
macro_rules! watch {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        // SAFETY: a plain read of a static.
        let v = unsafe { core::ptr::read_volatile(&raw const $crate::kernel::WATCH.$field) };
        v
    }};
}
pub(crate) use watch;

/// Loads a `T` at `base + off` from a BTF pointer (the verifier turns it into a fault-safe load).
#[inline(always)]
pub unsafe fn load<T: Copy>(base: *const u8, off: u32) -> T {
    // SAFETY: the caller passes a kernel object pointer the verifier knows the type of, and an
    // offset of a field of type `T` in it.
    unsafe { core::ptr::read_volatile(base.add(off as usize) as *const T) }
}

/// Copies `N` bytes from any kernel address; `None` if the address cannot be read.
#[inline(always)]
pub fn read_bytes<const N: usize>(src: *const u8) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    // SAFETY: the helper checks the source address and writes at most N bytes into `buf`.
    let ret = unsafe { bpf_probe_read_kernel(buf.as_mut_ptr().cast(), N as u32, src.cast()) };
    (ret == 0).then_some(buf)
}

/// Writes `value` into the output of the iteration whose `bpf_iter_meta` is `meta`: 0, or the
/// helper's negative errno (`-EOVERFLOW` when this read()'s buffer is full: the kernel then runs
/// the program again for the same object at the next read()).
///
/// # Safety
/// `meta` is the `bpf_iter_meta` of an iterator program's context.
#[inline(always)]
pub unsafe fn seq_write<T>(meta: *mut u8, value: &T) -> i64 {
    // SAFETY: `meta->seq` (its first field) is the seq_file of this iteration; `value` is
    // `size_of::<T>()` readable bytes.
    unsafe {
        let seq = *(meta as *const *mut core::ffi::c_void);
        aya_ebpf::helpers::generated::bpf_seq_write(
            seq.cast(),
            core::ptr::from_ref(value).cast_mut().cast(),
            core::mem::size_of::<T>() as u32,
        )
    }
}

/// An address as `SockRecord` keeps it (words whose bytes are in network order) as the 16 bytes
/// aya-log prints as IPv6 with `{:i}` (IPv4 ones as `::ffff:a.b.c.d`).
#[inline(always)]
pub fn ipv6(words: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size, and every bit pattern is a valid `[u8; 16]`.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// CLOCK_MONOTONIC in ns, the clock of every timestamp in the maps. (The cheaper coarse clock
/// is refused to tracing programs, and mixing clocks would skew durations.)
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no arguments, no preconditions.
    unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() }
}

/// The clock of one visit to a socket: read at most once, and only if something is dated (an
/// idle connection, most of them, costs no clock read in a walk).
#[derive(Default)]
pub struct Clock(u64);

impl Clock {
    #[inline(always)]
    pub fn now(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = now();
        }
        self.0
    }
}

/// Brings a record up to date with what the kernel has accepted (`snd_una`, `rcv_nxt` and the
/// peer's window as the socket holds them), dating any change to the visit's clock.
#[inline(always)]
pub fn reconcile(rec: &mut enforcer_common::SockRecord, snd_una: u32, rcv_nxt: u32, snd_wnd: u32, clock: &mut Clock) {
    if snd_una != rec.snd_una {
        // Progress since the last walk: dated now, later than it happened, so a stall reads
        // short, never long.
        rec.tx_progress_ns = clock.now();
        rec.snd_una = snd_una;
    }
    if rcv_nxt != rec.rcv_nxt {
        rec.rcv_nxt = rcv_nxt;
        rec.rx_progress_ns = clock.now();
    }
    if snd_wnd == 0 {
        if rec.zero_window_since_ns == 0 {
            rec.zero_window_since_ns = clock.now();
        }
    } else if rec.zero_window_since_ns != 0 {
        rec.zero_window_since_ns = 0;
    }
}
