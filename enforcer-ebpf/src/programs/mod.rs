mod adopt;
mod snapshot;
mod sockops;
