//! The http example's request handling, shared with the native baseline
//! (`bench/native-http`). The image itself is `src/main.rs`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod handler;
