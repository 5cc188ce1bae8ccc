//! Readings of the kernel's own, independent of the agent: which BPF programs a process holds,
//! which are still loaded, and whether this kernel allows a map-element iterator over socket
//! storage (which walk the agent should make).
use std::{collections::BTreeMap, io, os::fd::FromRawFd, os::fd::OwnedFd};

/// The BPF programs process `pid` holds, by id, with their names: the programs behind its file
/// descriptors, its links' included (`prog_id:` in `/proc/PID/fdinfo`).
pub fn programs_held_by(pid: u32) -> BTreeMap<u32, String> {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {dir}: {e}"));
    let ids: Vec<u32> = entries
        .flatten()
        // An fd closed since the listing has no fdinfo any more.
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|info| {
            info.lines().filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok()).collect::<Vec<u32>>()
        })
        .collect();
    let loaded = loaded_programs();
    ids.into_iter().map(|id| (id, loaded.get(&id).cloned().unwrap_or_default())).collect()
}

/// Every BPF program loaded on this host, by id, with its name.
pub fn loaded_programs() -> BTreeMap<u32, String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// Those of `programs` the kernel still has loaded (the same id: ids are not reused soon).
pub fn still_loaded(programs: &BTreeMap<u32, String>) -> BTreeMap<u32, String> {
    let loaded = loaded_programs();
    programs.iter().filter(|(id, _)| loaded.contains_key(id)).map(|(id, n)| (*id, n.clone())).collect()
}

// `enum bpf_cmd`, `enum bpf_map_type`, `enum bpf_prog_type`, `enum bpf_attach_type`
// (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_BTF_LOAD: libc::c_long = 18;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_SK_STORAGE: u32 = 24;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_ITER: u32 = 28;
const BPF_F_NO_PREALLOC: u32 = 1;

/// `union bpf_attr` for `BPF_BTF_LOAD`.
#[repr(C)]
#[derive(Default)]
struct BtfLoad {
    btf: u64,
    log_buf: u64,
    btf_size: u32,
    log_size: u32,
    log_level: u32,
    _pad: u32,
}

/// `union bpf_attr` for `BPF_MAP_CREATE`, up to the BTF type ids.
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    btf_vmlinux_value_type_id: u32,
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `attach_btf_obj_fd`.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    _pad: u32,
}

/// `union bpf_attr` for `BPF_LINK_CREATE` of an iterator: `iter_info` points at
/// `union bpf_iter_link_info`, whose `map.map_fd` names the map to walk.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

const _: () = assert!(size_of::<BtfLoad>() == 32);
const _: () = assert!(size_of::<MapCreate>() == 64);
const _: () = assert!(size_of::<ProgLoad>() == 120);
const _: () = assert!(size_of::<LinkCreate>() == 32);

/// bpf(2) returning a new fd.
fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-padded prefix of `union bpf_attr` for `cmd` that lives across the
    // call; the kernel reads at most `size_of::<T>()` bytes of it and the buffers it points to.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A BTF blob with one type, id 1: a 32-bit signed `int` (a socket storage map's key and value).
fn int_btf() -> Vec<u8> {
    const BTF_KIND_INT: u32 = 1;
    const BTF_INT_SIGNED: u32 = 1;
    let strings = b"\0int\0";
    let mut types = Vec::new();
    for word in [1, BTF_KIND_INT << 24, 4, (BTF_INT_SIGNED << 24) | 32] {
        types.extend_from_slice(&u32::to_le_bytes(word));
    }
    let mut btf = Vec::new();
    btf.extend_from_slice(&0xeb9f_u16.to_le_bytes());
    btf.extend_from_slice(&[1, 0]);
    for word in [24, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
        btf.extend_from_slice(&word.to_le_bytes());
    }
    btf.extend_from_slice(&types);
    btf.extend_from_slice(strings);
    btf
}

/// The id of the function `name` in the kernel's BTF (`/sys/kernel/btf/vmlinux`).
fn vmlinux_func_id(name: &str) -> u32 {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("reading /sys/kernel/btf/vmlinux");
    let word = |at: usize| u32::from_le_bytes(btf[at..at + 4].try_into().unwrap());
    assert_eq!(u16::from_le_bytes([btf[0], btf[1]]), 0xeb9f, "vmlinux BTF is not little-endian BTF");
    let hdr_len = word(4) as usize;
    let (type_start, type_len) = (hdr_len + word(8) as usize, word(12) as usize);
    let str_start = hdr_len + word(16) as usize;
    let name_at = |off: u32| {
        let s = &btf[str_start + off as usize..];
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    };
    let (mut at, mut id) = (type_start, 1);
    while at < type_start + type_len {
        let (name_off, info) = (word(at), word(at + 4));
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        // btf_type is 12 bytes, then what its kind carries (Documentation/bpf/btf.rst).
        let extra = match kind {
            2 | 7..=12 | 16 | 18 => 0,
            1 | 14 | 17 => 4,
            3 => 12,
            4 | 5 | 15 | 19 => 12 * vlen,
            6 | 13 => 8 * vlen,
            other => panic!("BTF kind {other} at type {id}: unknown to this reader"),
        };
        // BTF_KIND_FUNC
        if kind == 12 && name_at(name_off) == name.as_bytes() {
            return id;
        }
        at += 12 + extra;
        id += 1;
    }
    panic!("no function {name} in the kernel's BTF")
}

/// Whether this kernel lets a process make what the agent's records walk is: an iterator
/// program of `iter/bpf_sk_storage_map` linked to a socket storage map. Made here from scratch
/// (its own BTF, map and a two-instruction program), so the answer is the kernel's, not the
/// agent's: `Err` holds the step the kernel refused and its error.
pub fn allows_sk_storage_iterators() -> Result<(), String> {
    let btf = int_btf();
    let mut attr = BtfLoad { btf: btf.as_ptr() as u64, btf_size: btf.len() as u32, ..BtfLoad::default() };
    let btf_fd = bpf_fd(BPF_BTF_LOAD, &mut attr).map_err(|e| format!("BPF_BTF_LOAD: {e}"))?;
    let mut attr = MapCreate {
        map_type: BPF_MAP_TYPE_SK_STORAGE,
        key_size: 4,
        value_size: 4,
        map_flags: BPF_F_NO_PREALLOC,
        btf_fd: raw(&btf_fd),
        btf_key_type_id: 1,
        btf_value_type_id: 1,
        ..MapCreate::default()
    };
    let map_fd = bpf_fd(BPF_MAP_CREATE, &mut attr).map_err(|e| format!("BPF_MAP_CREATE sk_storage: {e}"))?;

    // r0 = 0; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_TRACING,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        expected_attach_type: BPF_TRACE_ITER,
        attach_btf_id: vmlinux_func_id("bpf_iter_bpf_sk_storage_map"),
        ..ProgLoad::default()
    };
    attr.prog_name[..9].copy_from_slice(b"walkprobe");
    let prog_fd = bpf_fd(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let said = String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned();
        format!("BPF_PROG_LOAD iter/bpf_sk_storage_map: {e} {}", said.trim())
    })?;

    let map = raw(&map_fd).to_ne_bytes();
    let mut info = [0u8; 8];
    info[..4].copy_from_slice(&map);
    let mut attr = LinkCreate {
        prog_fd: raw(&prog_fd),
        attach_type: BPF_TRACE_ITER,
        iter_info: info.as_ptr() as u64,
        iter_info_len: info.len() as u32,
        ..LinkCreate::default()
    };
    bpf_fd(BPF_LINK_CREATE, &mut attr).map_err(|e| format!("BPF_LINK_CREATE over the sk_storage map: {e}"))?;
    Ok(())
}

fn raw(fd: &OwnedFd) -> u32 {
    std::os::fd::AsRawFd::as_raw_fd(fd) as u32
}
