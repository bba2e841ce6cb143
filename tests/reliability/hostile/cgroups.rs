//! Hostile tenant, delegated cgroups: limits the tenant cannot lift, checked from the host.
