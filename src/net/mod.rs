//! Framing and transport: `tag + length + body` frames as `Bytes`, buffered reads and
//! batched writes over plain TCP or TLS, and the process-wide budget of large messages.
pub mod budget;
mod connection;
mod frame;
pub mod park;
pub mod stream;
pub mod tls;
pub mod uring;

pub use connection::{ConnError, Connection};
pub use frame::{Frame, FrameError};
pub use stream::Stream;
