//! What the tests, benchmarks and examples of tokengate share: an in-process issuer
//! ([`issuer`]), free loopback ports, a guard that kills a child process, and bounded
//! polling ([`process`]).

pub mod issuer;
pub mod process;
