//! End-to-end tests: real reverse proxies in front of the real tokengate, with tokens from
//! a real OpenID Provider.
//!
//! Each test starts its own processes on free loopback ports: the OpenID Provider
//! (panva's `oidc-provider`, tests/e2e/op/op.mjs) as a child process, the tokengate
//! application in this process, an upstream application that echoes what it received
//! and says which handler a permissive framework would route it to ([`upstream`]), and
//! the proxy as a child process configured from the files in `deploy/`. Every child
//! is killed when its guard drops, also when the test fails. The proxies and the OpenID
//! Provider are installed by `scripts/test.sh`; a missing one fails the test with that
//! instruction, it is never skipped.
//!
//! - [`nginx`]: plain nginx `auth_request` with deploy/nginx/tokengate.conf;
//! - [`ingress_nginx`]: the auth location of the ingress-nginx template, reproduced in
//!   deploy/ingress-nginx/tokengate-ingress.conf, with a policy in the auth URL;
//! - [`traefik`]: Traefik `forwardAuth` with deploy/traefik/;
//! - [`envoy`]: Envoy's HTTP `ext_authz` filter with deploy/envoy/envoy.yaml;
//! - [`auth_cache`]: ingress-nginx's auth cache (nginx `proxy_cache`) with
//!   deploy/ingress-nginx/tokengate-ingress-auth-cache.conf;
//! - [`key_rotation`]: the provider restarted with a new signing key, under a new `kid`
//!   or the same one;
//! - [`introspection`]: opaque tokens introspected by tokengate, then revoked;
//! - [`revocation`]: three tokengate processes sharing a real Redis: back-channel logouts
//!   from the provider, revocations propagated, measured, and kept through an outage;
//! - [`identity`]: identities crafted at the provider (`system:` names behind whitespace,
//!   unverified or malformed emails) through the proxies.
//!
//! What the proxies must do alike (forged identity headers dropped, denials passed on,
//! failing closed, …) is written once in [`scenarios`] and run by each proxy's tests;
//! requests crafted to be read two ways (ambiguous paths, case and globs, `Host` tricks,
//! forged impersonation, header spellings) are tables in [`attacks`], with each proxy's
//! real behaviour in its own column.

mod attacks;
mod auth_cache;
mod envoy;
mod envoy_grpc;
mod identity;
mod ingress_nginx;
mod introspection;
mod key_rotation;
mod nginx;
mod provider;
mod revocation;
mod scenarios;
mod support;
mod traefik;
mod upstream;
