//! End-to-end tests: real reverse proxies in front of the real tokengate.
//!
//! Each test starts its own processes on free loopback ports: the demo issuer and the
//! tokengate application in this process, an upstream application that echoes what it
//! received, and the proxy as a child process configured from the files in `deploy/`.
//! The proxies and the OpenID Provider are installed by `scripts/test.sh`; a missing one
//! fails the test with that instruction, it is never skipped.
//!
//! - [`nginx`]: plain nginx `auth_request` with deploy/nginx/tokengate.conf;
//! - [`introspection`]: the real `oidc-provider` (npm) issuing opaque tokens, introspected
//!   by tokengate and then revoked.

mod introspection;
mod nginx;
mod support;
