//! sotolito-net.
