//! Client and server authentication: SCRAM-SHA-256, md5, cleartext, trust; secrets and
//! the PgBouncer-style auth file. Sans-IO: the frontend/backend move the bytes.
