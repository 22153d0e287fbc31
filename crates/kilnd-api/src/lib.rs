//! The contract between kilnd and its clients, written once for both
//! sides: where the API listens ([`ApiAddr`], [`rundir`]), how a TCP
//! client proves it may use it ([`token`]), which requests exist and how
//! a service name travels in a path ([`Route`]), and how guest text is
//! made safe for a terminal ([`term`]), since both `kilnd -v` and
//! `kiln logs` print what instances wrote.

pub mod addr;
pub mod route;
pub mod rundir;
pub mod term;
pub mod token;

pub use addr::ApiAddr;
pub use route::{Route, RouteError};
pub use token::Token;
