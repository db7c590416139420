//! Handing out and proving new shares: a keyholder fetches their own
//! age-encrypted share of the new version and sends it back decrypted, which
//! is checked against its fingerprint and the principal it was dealt to.
//! Verified shares stay in memory only, to rebuild the new key if the daemon
//! restarted since `prepare`.

use crypto_core::{KeyVersion, Share};
use keyholder_api::{ShareEnvelope, ShareLine, ShareOutcome, UnsealResponse, VersionState};
use serde_json::json;

use super::{RotationError, Rotator, Step, lock};
use crate::principal::Principal;
use crate::rotation::TransitionError;
use crate::store::StoreError;

impl Rotator {
    /// `share fetch`: the caller's own new share, still age-encrypted.
    pub async fn share_for(
        &self,
        keyholder: &Principal,
        version: KeyVersion,
    ) -> Result<ShareEnvelope, RotationError> {
        let retired = self
            .daemon
            .store
            .versions()
            .await?
            .iter()
            .any(|r| r.version == version && r.state == VersionState::Retired);
        if retired {
            // Its key is gone on purpose; a share of it would rebuild it.
            return Err(RotationError::Refused(format!(
                "{version} is retired; its shares are no longer handed out (`keyholder status` shows the live versions)"
            )));
        }
        let envelope = self
            .daemon
            .store
            .share_envelope(version, &keyholder.name)
            .await?
            .ok_or_else(|| {
                RotationError::Refused(format!(
                    "no share of {version} was dealt to {}; check the version (`keyholder status`)",
                    keyholder.name
                ))
            })?;
        self.daemon
            .audit(
                &keyholder.name,
                "share_fetched",
                json!({"version": version.number(), "index": envelope.index}),
            )
            .await?;
        Ok(ShareEnvelope {
            keyring: self.daemon.config.keyring.clone(),
            version,
            index: envelope.index,
            age_armored: envelope.age_armored,
        })
    }

    /// `share verify`: a keyholder proves they can decrypt their new share by
    /// sending it back. Checked against its fingerprint and recipient.
    pub async fn verify_share(
        &self,
        keyholder: &Principal,
        lines: &[ShareLine],
    ) -> Result<UnsealResponse, RotationError> {
        let mut machine = self.machine.lock().await;
        let Some(version) = machine.next() else {
            return Err(TransitionError::WrongState {
                command: "share verify",
                needed: "prepared or shares_verified",
                actual: machine.state(),
                hint: "; no new version is waiting for its keyholders",
            }
            .into());
        };
        if !machine.accepts_share_verify() {
            return Err(TransitionError::WrongState {
                command: "share verify",
                needed: "a state between prepared and drained",
                actual: machine.state(),
                hint: "; no new version is waiting for its keyholders",
            }
            .into());
        }
        let record = self
            .daemon
            .store
            .versions()
            .await?
            .into_iter()
            .find(|r| r.version == version)
            .ok_or(StoreError::UnknownVersion { version })?;
        let mut outcomes = Vec::new();
        let mut accepted_any = false;
        // One audit entry for the submission, listing each line that parsed.
        let mut audited = Vec::new();
        for (position, line) in lines.iter().enumerate() {
            let outcome = |version, index, reason: Option<String>| ShareOutcome {
                position: position + 1,
                version,
                index,
                accepted: reason.is_none(),
                reason,
            };
            let share = match Share::parse(line.expose()) {
                Ok(share) => share,
                Err(_) => {
                    outcomes.push(outcome(None, None, Some("the share line does not parse (a copy error?); fetch it again with `keyholder share fetch`".into())));
                    continue;
                }
            };
            let index = share.index();
            let refuse = match share.check_belongs_to(
                &self.daemon.config.keyring,
                version,
                record.set,
            ) {
                Err(e) => Some(e.to_string()),
                Ok(()) => match record.dealt.get(&index) {
                    None => Some(format!("index {index} was never dealt")),
                    Some(dealt) if dealt.principal != keyholder.name => Some(format!(
                        "index {index} of {version} was dealt to {}, not to {}",
                        dealt.principal, keyholder.name
                    )),
                    Some(dealt) if !dealt.fingerprint.matches(&share) => Some(format!(
                        "index {index} of {version} does not match the share that was dealt (corrupted or forged)"
                    )),
                    Some(_) => None,
                },
            };
            audited.push(json!({
                "position": position + 1,
                "version": share.version().number(),
                "index": index,
                "accepted": refuse.is_none(),
                "reason": refuse,
            }));
            if refuse.is_none() {
                accepted_any = true;
                lock(&self.new_shares).insert(index, share.clone());
            }
            outcomes.push(outcome(Some(share.version()), Some(index), refuse));
        }
        if !audited.is_empty() {
            let refused = outcomes.iter().any(|o| !o.accepted);
            self.daemon
                .audit(
                    &keyholder.name,
                    if refused {
                        "share_verify_refused"
                    } else {
                        "share_verified"
                    },
                    json!({"version": version.number(), "lines": audited}),
                )
                .await?;
        }
        if accepted_any {
            let mut next = machine.clone();
            let reached = next.share_verified(&keyholder.name, self.daemon.config.threshold)?;
            self.rebuild_new_key_if_lost(version, &record)?;
            let states = if reached {
                vec![(version, VersionState::SharesVerified)]
            } else {
                Vec::new()
            };
            let step = Step {
                actor: &keyholder.name,
                action: if reached {
                    "rotation_shares_verified"
                } else {
                    "rotation_share_proven"
                },
                detail: json!({"version": version.number()}),
                version_states: states,
                new_version: None,
            };
            self.commit(&mut machine, next, step).await?;
        }
        Ok(UnsealResponse {
            sealed: self.daemon.vault.is_sealed(),
            outcomes,
            progress: Vec::new(),
            loaded: self.daemon.vault.held_versions(),
        })
    }

    /// After a restart the new key is gone from memory; once `threshold`
    /// verified shares are in, rebuild it (KCV-checked) and hold it again.
    fn rebuild_new_key_if_lost(
        &self,
        version: KeyVersion,
        record: &crate::store::VersionRecord,
    ) -> Result<(), RotationError> {
        if self.daemon.vault.is_sealed() || self.daemon.vault.key(version).is_some() {
            return Ok(());
        }
        let shares: Vec<Share> = lock(&self.new_shares)
            .values()
            .take(usize::from(record.threshold))
            .cloned()
            .collect();
        if shares.len() < usize::from(record.threshold) {
            return Ok(());
        }
        let key = crypto_core::combine(&shares, &record.kcv)
            .map_err(|e| RotationError::Refused(format!("rebuilding {version}: {e}")))?;
        self.daemon.vault.hold_pending(version, key);
        tracing::info!(%version, kcv = %record.kcv.prefix(), "new key rebuilt from verified shares");
        Ok(())
    }
}
