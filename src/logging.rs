//! tracing setup: plain or JSON lines.
