//! TLS helpers (filled in by the TLS work).
