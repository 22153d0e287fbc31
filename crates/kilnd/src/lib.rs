//! kilnd: starts kiln unikernels when a connection arrives, holds that
//! connection while the instance boots, splices it through, and stops
//! instances that have been idle for their service's timeout.
//!
//! The pieces: [`config`] reads `services.toml`; [`daemon`] owns the
//! services, their listeners and instances; [`instance`] spawns one
//! `kiln run` child wired to a [`kiln_peer`] link (reaped by [`reaper`]);
//! [`capacity`] says what the host can hold and admits connections and
//! instances; [`api`] serves the JSON/Prometheus HTTP API the `kiln` CLI
//! uses.

pub mod api;
pub mod capacity;
pub mod config;
pub mod daemon;
pub mod instance;
pub mod logs;
pub mod metrics;
pub mod reaper;
