//! Hostile tenant, private host paths and symlink-safe host-side writes into tenant trees.
