mod adopt;
mod holders;
mod relay;
mod snapshot;
mod sockops;
