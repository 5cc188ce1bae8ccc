mod adopt;
mod snapshot;
mod sockops;
mod tcp_probe;
