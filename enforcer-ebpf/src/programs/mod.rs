mod snapshot;
mod sockops;
mod tcp_destroy;
mod tcp_probe;
