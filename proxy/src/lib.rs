//! sotolito-proxy.
