//! Hostile tenant root: each attack on the tenant boundary is performed by
//! root inside a real tenant and asserted to fail, next to a positive
//! control showing that the probe itself works where it is allowed.

mod cgroups;
mod disk;
mod paths;
mod responses;
mod seccomp;
mod userns;
