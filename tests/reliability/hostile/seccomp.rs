//! Hostile tenant, the seccomp filter: namespaces, io_uring and the keyring stay out of reach.
