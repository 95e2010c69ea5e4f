//! datumfs: a FUSE filesystem that gives machine-learning jobs their data as plain files.
//!
//! `MOUNTPOINT/inputs/<name>/...` is served lazily from object storage through a persistent
//! block cache; `outputs/` is staged on local disk and becomes immutable datums on `datumfs sync`;
//! `config/inputs.json` describes every input file. See the README for the design.

#![warn(missing_docs)]

pub mod cache;
pub mod catalog;
pub mod checksum;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod control;
pub mod crash;
pub mod csi;
pub mod daemon;
pub mod fs;
pub mod fuse;
pub mod inputs;
pub mod joblog;
pub mod keys;
pub mod metrics;
pub mod outputs;
pub mod reader;
pub mod store;
pub mod sync;
pub mod uri;
pub mod util;
pub mod volumes;
