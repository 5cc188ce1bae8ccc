//! What the agent tells the world: whose a socket is (`attribution`), each decision as a log
//! line and a journal record (`decisions`), Prometheus metrics (`metrics`) and systemd's
//! readiness (`notify`). Imports `bpf`, `host`, `policy`, `model`.
pub mod attribution;
pub mod decisions;
pub mod metrics;
pub mod notify;
