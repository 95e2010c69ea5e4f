//! Inputs: declarations (flags and files), resolution of URIs (see [`crate::uri`]) to pinned
//! snapshots with keep-directories, and the integrity history of what was read.

pub mod arena;
pub mod integrity;
pub mod resolve;
pub mod spec;
pub mod table;
