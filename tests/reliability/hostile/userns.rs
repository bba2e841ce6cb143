//! Hostile tenant, user namespaces: tenant root is an unprivileged host user.
