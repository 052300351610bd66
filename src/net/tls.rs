//! rustls configurations for both sides.
