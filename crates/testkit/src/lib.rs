//! What the tests, benchmarks and examples of tokengate share: an in-process issuer,
//! plain or over TLS ([`issuer`]); free loopback ports, a guard that kills a child
//! process, who holds a port, and bounded polling ([`process`]); scratch directories
//! ([`scratch`]); and a private CA for TLS peers ([`tls`]).

pub mod issuer;
pub mod process;
pub mod scratch;
pub mod tls;
