pub mod kills;
pub mod run;
pub mod sockets;
pub mod status;
pub mod top;
