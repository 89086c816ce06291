//! Integration tests: the real application on port 0 against an in-process issuer whose
//! keys each test controls. Tokens are signed at test time.

mod auth_request;
mod config;
mod helpers;
mod keys;
mod readiness;
