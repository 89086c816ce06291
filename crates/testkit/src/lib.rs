//! What the tests, benchmarks and examples of tokengate share: an in-process issuer, plain or
//! TLS behind a private CA ([`issuer`]), free loopback ports, a guard that kills a child process, who holds a
//! port, bounded polling ([`process`]), and scratch directories ([`scratch`]).

pub mod issuer;
pub mod process;
pub mod scratch;
