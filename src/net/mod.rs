//! Framing and transport: `tag + length + body` frames as `Bytes`, buffered reads and
//! batched writes over plain TCP or TLS.
pub mod tls;
