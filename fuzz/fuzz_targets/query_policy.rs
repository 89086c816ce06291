//! The auth URL's query policy parser. Invariants beyond "no panic": an accepted query
//! yields only non-empty, trimmed values without the `,` separator; emails and domains
//! are lower-case; a query with any unknown parameter is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::policy::Requirements;

const KNOWN: &[&str] = &[
    "allowed_groups",
    "allowed_emails",
    "allowed_email_domains",
    "required_scopes",
];

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Requirements::from_query(query);
    let has_unknown = url::form_urlencoded::parse(query.as_bytes())
        .any(|(name, _)| !KNOWN.contains(&name.as_ref()));
    let Ok(requirements) = parsed else {
        return;
    };
    assert!(!has_unknown, "unknown parameter accepted: {query:?}");
    for list in [
        &requirements.groups,
        &requirements.emails,
        &requirements.email_domains,
        &requirements.scopes,
    ] {
        for value in list {
            assert!(!value.is_empty() && !value.contains(','), "{value:?}");
            assert_eq!(value.trim(), value);
        }
    }
    for value in requirements
        .emails
        .iter()
        .chain(&requirements.email_domains)
    {
        assert_eq!(value, &value.to_ascii_lowercase());
    }
});
