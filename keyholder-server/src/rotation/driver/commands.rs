//! The commands handlers send the orchestrator, and the handle they send
//! them through. Each command carries its reply channel; the orchestrator
//! answers it when the step is done (or refused).

use crypto_core::KeyVersion;
use keyholder_api::{
    RetirePlan, RollbackPlan, RotationStatus, ShareEnvelope, ShareLine, ThrottleRequest,
    UnsealResponse,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::{RotationError, Rotator, View};
use crate::principal::Principal;

type Reply<T> = oneshot::Sender<Result<T, RotationError>>;

/// One request to the orchestrator.
pub(crate) enum Command {
    Prepare {
        operator: Principal,
        version: Option<KeyVersion>,
        reply: Reply<RotationStatus>,
    },
    ShareFor {
        keyholder: Principal,
        version: KeyVersion,
        reply: Reply<ShareEnvelope>,
    },
    VerifyShare {
        keyholder: Principal,
        lines: Vec<ShareLine>,
        reply: Reply<UnsealResponse>,
    },
    Activate {
        operator: Principal,
        reply: Reply<RotationStatus>,
    },
    Switch {
        operator: Principal,
        reply: Reply<RotationStatus>,
    },
    SetPaused {
        operator: Principal,
        paused: bool,
        reply: Reply<RotationStatus>,
    },
    Throttle {
        operator: Principal,
        request: ThrottleRequest,
        reply: Reply<RotationStatus>,
    },
    Retire {
        operator: Principal,
        version: KeyVersion,
        execute: bool,
        reply: Reply<RetirePlan>,
    },
    Rollback {
        operator: Principal,
        execute: bool,
        reply: Reply<RollbackPlan>,
    },
    /// A config was reloaded: republish what status shows from it (the
    /// consumers); every step reads the config in force itself.
    Reload { done: oneshot::Sender<()> },
    /// Stop the worker (its checkpoint stays) and end the task.
    Stop { done: oneshot::Sender<()> },
}

impl Command {
    /// Answers a leader-only command with `refusal` (on a node that does
    /// not lead); the daemon's own commands are answered as done.
    pub(super) fn refuse(self, refusal: impl Fn() -> RotationError) {
        match self {
            Self::Prepare { reply, .. }
            | Self::Activate { reply, .. }
            | Self::Switch { reply, .. }
            | Self::SetPaused { reply, .. }
            | Self::Throttle { reply, .. } => {
                let _ = reply.send(Err(refusal()));
            }
            Self::ShareFor { reply, .. } => {
                let _ = reply.send(Err(refusal()));
            }
            Self::VerifyShare { reply, .. } => {
                let _ = reply.send(Err(refusal()));
            }
            Self::Retire { reply, .. } => {
                let _ = reply.send(Err(refusal()));
            }
            Self::Rollback { reply, .. } => {
                let _ = reply.send(Err(refusal()));
            }
            Self::Reload { done } | Self::Stop { done } => {
                let _ = done.send(());
            }
        }
    }
}

impl Rotator {
    /// Performs one command and answers it. A caller that went away (its
    /// connection closed) does not undo the step.
    pub(super) async fn handle(&mut self, command: Command) {
        match command {
            Command::Prepare {
                operator,
                version,
                reply,
            } => {
                let _ = reply.send(self.prepare(&operator, version).await);
            }
            Command::ShareFor {
                keyholder,
                version,
                reply,
            } => {
                let _ = reply.send(self.share_for(&keyholder, version).await);
            }
            Command::VerifyShare {
                keyholder,
                lines,
                reply,
            } => {
                let _ = reply.send(self.verify_share(&keyholder, &lines).await);
            }
            Command::Activate { operator, reply } => {
                let _ = reply.send(self.activate(&operator).await);
            }
            Command::Switch { operator, reply } => {
                let _ = reply.send(self.switch(&operator).await);
            }
            Command::SetPaused {
                operator,
                paused,
                reply,
            } => {
                let _ = reply.send(self.set_paused(&operator, paused).await);
            }
            Command::Throttle {
                operator,
                request,
                reply,
            } => {
                let _ = reply.send(self.throttle(&operator, &request).await);
            }
            Command::Retire {
                operator,
                version,
                execute,
                reply,
            } => {
                let _ = reply.send(self.retire(&operator, version, execute).await);
            }
            Command::Rollback {
                operator,
                execute,
                reply,
            } => {
                let _ = reply.send(self.rollback(&operator, execute).await);
            }
            Command::Reload { done } | Command::Stop { done } => {
                let _ = done.send(());
            }
        }
    }
}

/// What handlers hold: a way to send the orchestrator commands and the
/// `watch` of what it last published. Cheap to clone.
#[derive(Clone)]
pub struct RotationHandle {
    commands: mpsc::UnboundedSender<Command>,
    view: watch::Receiver<View>,
}

impl RotationHandle {
    pub(super) fn new(
        commands: mpsc::UnboundedSender<Command>,
        view: watch::Receiver<View>,
    ) -> Self {
        Self { commands, view }
    }

    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, RotationError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .map_err(|_| RotationError::Stopped)?;
        answer.await.map_err(|_| RotationError::Stopped)?
    }

    /// Tells the orchestrator a config was reloaded; returns once it has
    /// republished its view (between two steps, never inside one).
    pub async fn reloaded(&self) {
        let (done, answer) = oneshot::channel();
        if self.commands.send(Command::Reload { done }).is_ok() {
            let _ = answer.await;
        }
    }

    /// The rotation part of the status document; never waits on a step.
    pub fn status(&self) -> RotationStatus {
        self.view.borrow().status()
    }

    /// `rotate prepare`.
    pub async fn prepare(
        &self,
        operator: &Principal,
        version: Option<KeyVersion>,
    ) -> Result<RotationStatus, RotationError> {
        let operator = operator.clone();
        self.call(|reply| Command::Prepare {
            operator,
            version,
            reply,
        })
        .await
    }

    /// `share fetch`.
    pub async fn share_for(
        &self,
        keyholder: &Principal,
        version: KeyVersion,
    ) -> Result<ShareEnvelope, RotationError> {
        let keyholder = keyholder.clone();
        self.call(|reply| Command::ShareFor {
            keyholder,
            version,
            reply,
        })
        .await
    }

    /// `share verify`.
    pub async fn verify_share(
        &self,
        keyholder: &Principal,
        lines: Vec<ShareLine>,
    ) -> Result<UnsealResponse, RotationError> {
        let keyholder = keyholder.clone();
        self.call(|reply| Command::VerifyShare {
            keyholder,
            lines,
            reply,
        })
        .await
    }

    /// `rotate activate`.
    pub async fn activate(&self, operator: &Principal) -> Result<RotationStatus, RotationError> {
        let operator = operator.clone();
        self.call(|reply| Command::Activate { operator, reply })
            .await
    }

    /// `rotate switch`.
    pub async fn switch(&self, operator: &Principal) -> Result<RotationStatus, RotationError> {
        let operator = operator.clone();
        self.call(|reply| Command::Switch { operator, reply }).await
    }

    /// `rotate pause` / `rotate resume`.
    pub async fn set_paused(
        &self,
        operator: &Principal,
        paused: bool,
    ) -> Result<RotationStatus, RotationError> {
        let operator = operator.clone();
        self.call(|reply| Command::SetPaused {
            operator,
            paused,
            reply,
        })
        .await
    }

    /// `rotate throttle`.
    pub async fn throttle(
        &self,
        operator: &Principal,
        request: ThrottleRequest,
    ) -> Result<RotationStatus, RotationError> {
        let operator = operator.clone();
        self.call(|reply| Command::Throttle {
            operator,
            request,
            reply,
        })
        .await
    }

    /// `rotate retire`.
    pub async fn retire(
        &self,
        operator: &Principal,
        version: KeyVersion,
        execute: bool,
    ) -> Result<RetirePlan, RotationError> {
        let operator = operator.clone();
        self.call(|reply| Command::Retire {
            operator,
            version,
            execute,
            reply,
        })
        .await
    }

    /// `rotate rollback`.
    pub async fn rollback(
        &self,
        operator: &Principal,
        execute: bool,
    ) -> Result<RollbackPlan, RotationError> {
        let operator = operator.clone();
        self.call(|reply| Command::Rollback {
            operator,
            execute,
            reply,
        })
        .await
    }

    /// Stops the worker (after its batch in flight) and the orchestrator.
    pub async fn stop(&self) {
        let (done, stopped) = oneshot::channel();
        if self.commands.send(Command::Stop { done }).is_ok() {
            let _ = stopped.await;
        }
    }
}
