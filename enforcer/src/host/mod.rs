//! The host outside BPF: system checks and syscalls (`sys`), cgroups (`cgroup`), network
//! namespaces (`netns`), where memory pressure is read (`pressure`), and netlink sock_diag
//! (`sock_diag`: destroying a socket, and finding its inode). Imports `model`.
pub mod cgroup;
pub mod netns;
pub mod pressure;
pub mod sock_diag;
pub mod sys;
