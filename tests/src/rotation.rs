//! Steps of a rotation as the people in it take them, over the real API:
//! operators post to `/v1/rotation/*`, keyholders fetch their new share,
//! decrypt it with their own age identity and send it back, the database
//! fetches its keyring; and polling `/v1/status` until the daemon got there.

use std::time::{Duration, Instant};

use crypto_core::{Kcv, Key, KeyVersion, Keyring, Share};
use keyholder_api::{RotationState, ShareEnvelope, Status, UnsealResponse};

use crate::client::Answer;
use crate::daemon::{DATABASE, Env, OPERATOR};

/// `vN`.
pub fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

impl Env {
    /// `GET /v1/status` as the operator.
    pub async fn status(&self) -> Status {
        let answer = self.client(OPERATOR).get("/v1/status").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()
    }

    /// `POST path` with `body` as `operator`.
    pub async fn post_as(&self, operator: &str, path: &str, body: serde_json::Value) -> Answer {
        self.client(operator).post(path, &body).await
    }

    /// `POST path` with `body` as the operator; panics unless it answers 200.
    pub async fn operate(&self, path: &str, body: serde_json::Value) -> Answer {
        let answer = self.post_as(OPERATOR, path, body).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        answer
    }

    /// Keyholder `name` fetches their share of `version`
    /// (`/v1/rotation/share`) and decrypts it with their age identity: the
    /// share line.
    pub async fn fetch_new_share(&self, name: &str, version: u32) -> String {
        let answer = self
            .client(name)
            .get(&format!("/v1/rotation/share?version={version}"))
            .await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
        let envelope: ShareEnvelope = answer.json();
        assert_eq!(envelope.version, v(version));
        let identity = self.pki.load_age_identity(name);
        let plain = age::decrypt(&identity, envelope.age_armored.as_bytes()).unwrap();
        let text = String::from_utf8(plain).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(lines.len(), 1, "one share line in {name}'s share file");
        lines[0].to_owned()
    }

    /// Keyholder `name` proves their new share (`/v1/rotation/verify`).
    pub async fn verify_new_share(&self, name: &str, line: &str) -> UnsealResponse {
        let answer = self
            .client(name)
            .post(
                "/v1/rotation/verify",
                &serde_json::json!({ "shares": [line] }),
            )
            .await;
        assert_eq!(answer.status, 200, "{name}: {}", answer.body);
        let response: UnsealResponse = answer.json();
        assert!(response.all_accepted(), "{name}: {response:?}");
        response
    }

    /// Each keyholder submits their lines in one request, in the order
    /// given; returns the last answer.
    pub async fn unseal_with(&self, submissions: &[(&str, Vec<String>)]) -> UnsealResponse {
        let mut last = None;
        for (name, lines) in submissions {
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let answer = self.client(name).unseal(&lines).await;
            assert_eq!(answer.status, 200, "{name}: {}", answer.body);
            let response: UnsealResponse = answer.json();
            assert!(response.all_accepted(), "{name}: {response:?}");
            last = Some(response);
        }
        last.expect("at least one submission")
    }

    /// The keyring the database principal gets (`GET /v1/keyring`).
    pub async fn database_keyring(&self) -> Keyring {
        let answer = self.client(DATABASE).get("/v1/keyring").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        Keyring::from_handover_json(&answer.body).unwrap()
    }

    /// The key of `version` rebuilt from share `lines` and checked against
    /// the KCV the daemon publishes in its status.
    pub async fn rebuild_key(&self, version: u32, lines: &[&str]) -> Key {
        let status = self.status().await;
        let kcv: Kcv = status
            .versions
            .iter()
            .find(|s| s.version == v(version))
            .unwrap_or_else(|| panic!("v{version} is not in the status: {status:?}"))
            .kcv
            .parse()
            .unwrap();
        let shares: Vec<Share> = lines.iter().map(|l| Share::parse(l).unwrap()).collect();
        crypto_core::combine(&shares, &kcv).unwrap()
    }

    /// Polls `/v1/status` until `done` holds; panics after `timeout` with the
    /// last status and the daemon's log.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Status) -> bool,
    ) -> Status {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status().await;
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {what}; last status: {status:#?}\nlog:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the rotation is in `state`.
    pub async fn wait_rotation(&self, state: RotationState, timeout: Duration) -> Status {
        self.wait_for(&format!("rotation {state}"), timeout, |s| {
            s.rotation.as_ref().is_some_and(|r| r.state == state)
        })
        .await
    }
}
