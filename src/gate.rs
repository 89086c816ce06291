//! The one decision path. Every adapter (HTTP `/auth`, HTTP `/ext-authz`, later gRPC
//! `Check`) turns what its proxy sent into an [`AuthQuery`] and calls [`Gate::decide`];
//! only rendering the [`Decision`] differs. The order is fixed: the first matching rule
//! (which may deny, or grant without a token), then the token, then the requirements of
//! the rule and of the query.

use std::sync::Arc;

use crate::error::{AuthError, Reason};
use crate::policy::{Access, Requirements, RouteRules};
use crate::request::OriginalRequest;
use crate::verify::cache::{unix_now, VerifiedToken};
use crate::verify::Verifier;

/// What an adapter learned from its proxy's call, in protocol-neutral form.
pub struct AuthQuery<'a> {
    /// What the client asked the proxy for (the adapter keeps it, for its audit line).
    pub original: &'a OriginalRequest,
    /// Requirements carried by the call itself (the auth URL's query string).
    pub requirements: Requirements,
    /// The token from the configured sources; `MissingToken` when there is none, another
    /// denial when the sources are unusable (two `Authorization` headers, too large).
    pub token: Result<&'a str, AuthError>,
    /// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
    pub preflight: bool,
}

/// How a request was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A rule let it through without a token (public path or CORS preflight).
    Anonymous,
    /// A valid token that met every requirement.
    Authenticated,
}

/// A decision with what it was based on, for the answer and the log line.
pub struct Decision<'r> {
    pub outcome: Result<Verdict, AuthError>,
    /// The verified token, when one was verified (also on a policy denial).
    pub token: Option<Arc<VerifiedToken>>,
    pub cache_hit: bool,
    /// The matching rule's name.
    pub rule: Option<&'r str>,
    /// How long a caching proxy may keep this answer, in seconds; 0 = not at all.
    pub keep_for: u64,
}

impl Decision<'_> {
    /// A request refused before any rule or token was looked at (an unreadable call).
    pub fn refused(error: AuthError) -> Self {
        Self {
            outcome: Err(error),
            token: None,
            cache_hit: false,
            rule: None,
            keep_for: 0,
        }
    }
}

/// Everything a decision needs, built once and shared by every adapter and worker.
pub struct Gate {
    pub verifier: Verifier,
    pub rules: RouteRules,
    /// The operator lets proxies cache allows that depended on the route.
    proxy_cache_route_verdicts: bool,
    /// Some rule matches on host, path or method.
    rules_are_conditional: bool,
}

impl Gate {
    pub fn new(verifier: Verifier, rules: RouteRules, proxy_cache_route_verdicts: bool) -> Self {
        Self {
            rules_are_conditional: rules.are_conditional(),
            verifier,
            rules,
            proxy_cache_route_verdicts,
        }
    }

    /// Decides one request.
    pub async fn decide(&self, query: AuthQuery<'_>) -> Decision<'_> {
        let original = query.original;
        // Requirements carried by the call are the operator's word for this location: an
        // anonymous rule, written for the whole site, does not lift them.
        let rule = self
            .rules
            .first_match(original, query.requirements.is_empty());
        let mut decision = Decision {
            outcome: Ok(Verdict::Authenticated),
            token: None,
            cache_hit: false,
            rule: rule.map(|rule| rule.name.as_str()),
            keep_for: 0,
        };
        if let Some(rule) = rule {
            let early = match rule.access {
                Access::Deny => Some(Err(Reason::RouteDenied.into())),
                Access::Anonymous => Some(Ok(Verdict::Anonymous)),
                Access::Authenticated
                    if query.preflight && rule.lets_preflight_through(original) =>
                {
                    Some(Ok(Verdict::Anonymous))
                }
                Access::Authenticated => None,
            };
            if let Some(outcome) = early {
                decision.outcome = outcome;
                return decision;
            }
        }
        let allowed = match query.token {
            Ok(token) => self.verifier.verify_token(token).await,
            Err(error) => Err(error),
        };
        let allowed = match allowed {
            Ok(allowed) => allowed,
            Err(error) => {
                decision.outcome = Err(error);
                return decision;
            }
        };
        let identity = &allowed.token.identity;
        decision.outcome = rule
            .map_or(Ok(()), |rule| rule.requirements.check(identity))
            .and_then(|()| query.requirements.check(identity))
            .and_then(|()| {
                identity
                    .problem
                    .map_or(Ok(()), |problem| Err(problem.into()))
            })
            .map(|()| Verdict::Authenticated);
        if decision.outcome.is_ok() && self.proxy_cacheable(&query.requirements) {
            // Never past the token's expiry, nor longer than we would trust it ourselves
            // without checking again.
            decision.keep_for = allowed
                .token
                .expires_at
                .saturating_sub(unix_now())
                .min(self.verifier.proxy_cache_cap(allowed.token.issuer));
        }
        decision.cache_hit = allowed.cache_hit;
        decision.token = Some(allowed.token);
        decision
    }

    /// Whether an allow may be kept by a caching proxy. Its cache key is the operator's
    /// (ingress-nginx `auth-cache-key`), often the token alone: an allow that depended on
    /// the route (a rule on host, path or method, or requirements in the call) would then
    /// be served for another route. So only with no such dependency, or the opt-in.
    fn proxy_cacheable(&self, requirements: &Requirements) -> bool {
        self.proxy_cache_route_verdicts || (!self.rules_are_conditional && requirements.is_empty())
    }
}
