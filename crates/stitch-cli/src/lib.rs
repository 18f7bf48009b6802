//! The library behind the `stitch` command: each subcommand is a function here
//! so tests can call it; `main.rs` only parses arguments.

pub mod demo;
pub mod device;
pub mod generate;
pub mod info;
pub mod ops_table;
pub mod profile;
pub mod run;
