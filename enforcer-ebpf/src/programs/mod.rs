mod adopt;
mod holders;
mod relay;
mod revisit;
mod snapshot;
mod sockops;
