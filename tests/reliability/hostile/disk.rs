//! Hostile tenant, disk quotas: a tenant cannot fill the host's disk.
