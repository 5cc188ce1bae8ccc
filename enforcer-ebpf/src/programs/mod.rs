mod adopt;
mod holders;
mod snapshot;
mod sockops;
