//! Integration tests: the real application on port 0 against an in-process issuer whose
//! keys and introspection answers each test controls. Tokens are signed at test time.

mod auth_request;
mod config;
mod contracts;
mod demo;
mod deploy;
mod docs;
mod duplicate_members;
mod grpc;
mod helpers;
mod identity_claims;
mod identity_output;
mod introspection;
mod introspection_flood;
mod keys;
mod lifecycle;
mod limits;
mod memory;
mod observability;
mod policy;
mod process;
mod readiness;
mod reload;
mod revocation;
mod tls;
