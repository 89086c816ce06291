//! Metrics move with what happens: decisions, latency, cache hits, key refreshes.

use crate::helpers::*;

fn histogram_count(app: &TestApp, name: &str, outcome: &str) -> u64 {
    app.registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter())
        .filter(|metric| {
            metric
                .get_label()
                .iter()
                .any(|pair| pair.value() == outcome)
        })
        .map(|metric| metric.get_histogram().get_sample_count())
        .sum()
}

#[tokio::test]
async fn counters_move_for_allow_deny_cache_hit_and_refresh() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let token = issuer.token();

    app.auth_with_token(&token).await;
    app.auth_with_token(&token).await;
    app.auth_without_token().await;
    app.auth_with_token("garbage").await;

    let decisions =
        |labels: &[(&str, &str)]| counter(&app.registry, "tokengate_decisions_total", labels);
    assert_eq!(decisions(&[("outcome", "allow")]), 2.0);
    assert_eq!(
        decisions(&[("outcome", "deny"), ("reason", "missing_token")]),
        1.0
    );
    assert_eq!(
        decisions(&[("outcome", "deny"), ("reason", "malformed_token")]),
        1.0
    );
    let cache = |result| {
        counter(
            &app.registry,
            "tokengate_cache_requests_total",
            &[("cache", "verified_token"), ("result", result)],
        )
    };
    assert_eq!(cache("hit"), 1.0);
    assert_eq!(
        cache("miss"),
        1.0,
        "garbage is refused before the cache counts a miss"
    );
    assert_eq!(
        counter(
            &app.registry,
            "tokengate_jwks_refreshes_total",
            &[("result", "success")]
        ),
        1.0
    );
    assert_eq!(
        histogram_count(&app, "tokengate_request_duration_seconds", "allow"),
        2
    );
    assert_eq!(
        histogram_count(&app, "tokengate_request_duration_seconds", "deny"),
        2
    );

    // A key rotation is one more refresh.
    issuer.publish(vec![rsa_key("k1"), rsa_key("k2")]);
    app.auth_with_token(&rsa_key("k2").sign(&issuer.claims()))
        .await;
    assert_eq!(
        counter(
            &app.registry,
            "tokengate_jwks_refreshes_total",
            &[("result", "success")]
        ),
        2.0
    );
}

#[tokio::test]
async fn scrape_shows_key_age_in_flight_and_process_metrics() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    app.auth_with_token(&issuer.token()).await;

    let body = app.admin_get("/metrics").await.text().await.unwrap();

    let key_age = body
        .lines()
        .find(|line| line.starts_with("tokengate_jwks_key_age_seconds{"))
        .expect("key age series");
    let age: f64 = key_age.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((0.0..600.0).contains(&age), "{key_age}");
    assert!(
        body.contains("tokengate_requests_in_flight 0"),
        "no request left in flight"
    );
    assert!(body.contains("process_resident_memory_bytes"));
    assert!(body.contains("process_open_fds"));
    assert!(body
        .contains("tokengate_request_duration_seconds_bucket{outcome=\"allow\",le=\"0.00001\"}"));
}

#[tokio::test]
async fn evictions_are_counted_when_the_cache_is_full() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |settings| settings.cache.max_entries = 5).await;
    for i in 0..40 {
        let mut claims = issuer.claims();
        claims["sub"] = format!("user-{i}").into();
        app.auth_with_token(&issuer.sign(&claims)).await;
    }
    // moka applies evictions on its housekeeping: poll a little.
    let mut evicted = 0.0;
    for _ in 0..50 {
        app.auth_with_token(&issuer.token()).await;
        evicted = counter(
            &app.registry,
            "tokengate_cache_evictions_total",
            &[("cache", "verified_token")],
        );
        if evicted > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(evicted > 0.0);
}
