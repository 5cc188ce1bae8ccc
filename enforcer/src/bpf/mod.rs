//! The kernel side as user space sees it: loading and attaching the programs (`loader`), the
//! pin directory with the agent's record in it (`pins`), the iterator links aya lacks
//! (`iter_link`), BTF and field offsets (`btf`, `offsets`), the programs' log (`kernel_log`),
//! the one-agent-per-cgroup check (`attached`), and each pinned map with its one owner: the
//! contained trie (`contained`), the snapshot the CLI reads (`snapshot`), the agent's scan
//! (`scan`) and the kill journal's ring (`journal`). Imports `host`, `model`.
pub mod attached;
pub mod btf;
pub mod contained;
pub mod iter_link;
pub mod journal;
pub mod kernel_log;
pub mod loader;
pub mod offsets;
pub mod pins;
pub mod revisit;
pub mod scan;
pub mod snapshot;
