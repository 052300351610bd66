//! PostgreSQL-identical hash functions (filled in by the hashing work).
