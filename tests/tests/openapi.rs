//! The OpenAPI document the real `keyholderd` serves, and the refusals
//! schemathesis found (deploy/schemathesis.sh runs it against the daemon):
//! a body that is not an object, an integer written as a float, a number
//! beyond what the daemon stores. Each is a 4xx that names what was wrong.

use keyholder_api::ApiError;
use keyholder_tests::daemon::{DATABASE, KEYHOLDERS, OPERATOR};
use keyholder_tests::{Env, EnvOptions};

#[tokio::test]
async fn every_principal_reads_the_document_committed_as_docs_openapi_json() {
    let env = Env::new(EnvOptions::default());
    let _daemon = env.start().await;
    let committed = include_str!("../../docs/openapi.json");
    for who in [OPERATOR, DATABASE, KEYHOLDERS[0]] {
        let answer = env.client(who).get("/v1/openapi.json").await;
        assert_eq!(answer.status, 200, "{who}: {}", answer.body);
        assert!(answer.body == committed, "{who} read another document");
    }
    let document: serde_json::Value = serde_json::from_str(committed).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
}

#[tokio::test]
async fn hostile_bodies_and_queries_are_refused_with_what_was_wrong() {
    let env = Env::new(EnvOptions::default());
    let _daemon = env.start().await;
    let operator = env.client(OPERATOR);
    let refused = |status: u16, code: &str, error: &str| {
        (
            status,
            ApiError {
                error: error.to_owned(),
                code: code.to_owned(),
                leader: None,
            },
        )
    };
    let cases = [
        (
            "/v1/rotation/throttle",
            "[null, null]",
            refused(
                400,
                "bad_request",
                "the body is not a JSON object (it must start with `{`)",
            ),
        ),
        (
            "/v1/rotation/throttle",
            r#"{"batch_size": 407.0}"#,
            refused(
                400,
                "bad_request",
                "the body does not have the expected fields (invalid type, line 1 column 20)",
            ),
        ),
        (
            "/v1/rotation/throttle",
            r#"{"rows_per_sec": 9223372036854775808}"#,
            refused(
                409,
                "refused",
                "reencrypt field `rows_per_sec`: must be between 0 (unlimited) and 10000000",
            ),
        ),
        (
            "/v1/rotation/retire",
            r#"{"version": 66.0, "execute": false}"#,
            refused(
                400,
                "bad_request",
                "the body does not have the expected fields (invalid type, line 1 column 16)",
            ),
        ),
    ];
    for (path, body, (status, error)) in cases {
        let answer = operator
            .send(reqwest::Method::POST, path, Some(body.to_owned()))
            .await
            .unwrap();
        assert_eq!(answer.status, status, "{path} {body}: {}", answer.body);
        assert_eq!(answer.error(), error, "{path} {body}");
    }
    let answer = operator.get("/v1/audit?since=9223372036854775808").await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(
        answer.error().error,
        "since must be 0 to 9223372036854775807 (an entry's seq)"
    );
    // Nothing changed: the throttle is still the default.
    let rotation: keyholder_api::RotationStatus = operator.get("/v1/rotation").await.json();
    assert_eq!(
        (rotation.rows_per_sec_limit, rotation.batch_size),
        (0, 1000)
    );
}
