//! Classify: recover the protocol and hostname from a client's first bytes
//! (being written).
