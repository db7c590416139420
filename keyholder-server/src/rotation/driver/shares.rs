//! Handing out and proving new shares: a keyholder fetches their own
//! age-encrypted share of the new version and sends it back decrypted, which
//! is checked against its fingerprint and the principal it was dealt to.
//! Verified shares stay in memory only, to rebuild the new key if the daemon
//! restarted since `prepare`, and only while it is unsealed.

use std::collections::BTreeMap;

use crypto_core::{KeyVersion, Share};
use keyholder_api::{ShareEnvelope, ShareLine, UnsealResponse, VersionState};
use keyholder_core::VersionFacts;
use keyholder_core::admission::{self, Scope};
use serde_json::json;

use super::{RotationError, Rotator, Step};
use crate::principal::Principal;
use crate::rotation::TransitionError;
use crate::store::StoreError;

impl Rotator {
    /// `share fetch`: the caller's own new share, still age-encrypted.
    pub(super) async fn share_for(
        &mut self,
        keyholder: &Principal,
        version: KeyVersion,
    ) -> Result<ShareEnvelope, RotationError> {
        let retired = self
            .daemon
            .store()
            .versions()
            .await?
            .iter()
            .any(|r| r.version == version && r.state == VersionState::Retired);
        if retired {
            // Its key is gone on purpose; a share of it would rebuild it.
            return Err(RotationError::ShareRetired { version });
        }
        let envelope = self
            .daemon
            .store()
            .share_envelope(version, &keyholder.name)
            .await?
            .ok_or_else(|| RotationError::NoShareDealt {
                version,
                keyholder: keyholder.name.clone(),
            })?;
        self.daemon
            .audit(
                &keyholder.name,
                "share_fetched",
                json!({"version": version.number(), "index": envelope.index}),
            )
            .await?;
        Ok(ShareEnvelope {
            keyring: self.daemon.config().keyring.clone(),
            version,
            index: envelope.index,
            age_armored: envelope.age_armored,
        })
    }

    /// `share verify`: a keyholder proves they can decrypt their new share by
    /// sending it back. Admitted by the same rules as at unseal
    /// ([`admission::admit`]), for the new version only.
    pub(super) async fn verify_share(
        &mut self,
        keyholder: &Principal,
        lines: &[ShareLine],
    ) -> Result<UnsealResponse, RotationError> {
        let version = self.version_to_verify()?;
        let record = self
            .daemon
            .store()
            .versions()
            .await?
            .into_iter()
            .find(|r| r.version == version)
            .ok_or(StoreError::UnknownVersion { version })?;
        let mut outcomes = Vec::new();
        let mut accepted_any = false;
        // One audit entry for the submission, listing each line that parsed.
        let mut audited = Vec::new();
        let facts = BTreeMap::from([(version, VersionFacts::from_record(&record, false))]);
        for (i, line) in lines.iter().enumerate() {
            let verdict = admission::admit(
                line.expose(),
                &keyholder.name,
                &self.daemon.config().keyring,
                &facts,
                Scope::NewVersion(version),
                // A keyholder may prove its share again: it counts once.
                |_, _, _| false,
            );
            let outcome = admission::outcome(i + 1, &keyholder.name, &verdict);
            if let Some(shown) = outcome.version {
                audited.push(json!({
                    "position": outcome.position,
                    "version": shown.number(),
                    "index": outcome.index,
                    "accepted": outcome.accepted,
                    "reason": outcome.reason,
                }));
            }
            if let Ok(share) = verdict {
                accepted_any = true;
                // Kept only while the new key is not held (a restart lost
                // it), to rebuild it once enough are in; otherwise the
                // share has done its work and is dropped (zeroized) here.
                // A sealed daemon rebuilds nothing: kept, the shares would
                // wait for an unseal that may never come, `threshold` of
                // them being the new key in a sealed daemon's memory. The
                // verification counts; the keyholders send the share again
                // after the unseal (activate says so).
                let vault = self.daemon.vault();
                if !vault.is_sealed() && vault.key(version).is_none() {
                    self.new_shares.insert(share.index(), share);
                }
            }
            outcomes.push(outcome);
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
        // The lines and the shares parsed from them are dropped (zeroized);
        // the copies the parsing and the checks left in dead stack frames
        // go when each thread next idles.
        crate::hygiene::keys_left();
        if accepted_any {
            self.count_verified(keyholder, &record).await?;
        }
        Ok(UnsealResponse {
            sealed: self.daemon.vault().is_sealed(),
            outcomes,
            progress: Vec::new(),
            loaded: self.daemon.vault().held_versions(),
        })
    }

    /// The version whose shares `share verify` takes now.
    fn version_to_verify(&self) -> Result<KeyVersion, RotationError> {
        let Some(version) = self.machine.next() else {
            return Err(TransitionError::WrongState {
                command: "share verify",
                needed: "prepared or shares_verified",
                actual: self.machine.state(),
                hint: "; no new version is waiting for its keyholders",
            }
            .into());
        };
        if !self.machine.accepts_share_verify() {
            return Err(TransitionError::WrongState {
                command: "share verify",
                needed: "a state between prepared and drained",
                actual: self.machine.state(),
                hint: "; no new version is waiting for its keyholders",
            }
            .into());
        }
        Ok(version)
    }

    /// `keyholder` proved their share of `record`'s version: counted by the
    /// machine (SharesVerified once `threshold` have), and the new key is
    /// rebuilt if a restart lost it.
    async fn count_verified(
        &mut self,
        keyholder: &Principal,
        record: &crate::store::VersionRecord,
    ) -> Result<(), RotationError> {
        let version = record.version;
        let mut next = self.machine.clone();
        let reached = next.share_verified(&keyholder.name, self.daemon.config().threshold)?;
        self.rebuild_new_key_if_lost(version, record)?;
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
        self.commit(next, step).await
    }

    /// After a restart the new key is gone from memory; once `threshold`
    /// verified shares are in, rebuild it (KCV-checked), hold it again and
    /// drop the shares.
    fn rebuild_new_key_if_lost(
        &mut self,
        version: KeyVersion,
        record: &crate::store::VersionRecord,
    ) -> Result<(), RotationError> {
        if self.daemon.vault().is_sealed() || self.daemon.vault().key(version).is_some() {
            return Ok(());
        }
        let shares: Vec<Share> = self
            .new_shares
            .values()
            .take(usize::from(record.threshold))
            .cloned()
            .collect();
        if shares.len() < usize::from(record.threshold) {
            return Ok(());
        }
        let key = crypto_core::combine(&shares, &record.kcv)
            .map_err(|source| RotationError::Rebuild { version, source })?;
        self.daemon.vault().hold_pending(version, key);
        self.new_shares.clear();
        tracing::info!(%version, kcv = %record.kcv.prefix(), "new key rebuilt from verified shares");
        Ok(())
    }
}
