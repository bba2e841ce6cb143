//! sotolito-provisioner.
