//! Releasing authorizations no order needs (approved for an order cancelled while the
//! provider was answering), after the outcome that says so committed.

use std::time::Duration;

use super::worker::PaymentWorker;

impl PaymentWorker {
    /// Voids each authorization in `references`, each call bounded like every call to the
    /// provider: a hanging void must not stop the worker. A void that fails is logged.
    pub(super) async fn void_all(&self, references: Vec<String>) {
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        for reference in references {
            match tokio::time::timeout(timeout, self.gateway.void(&reference)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(module = "checkout", reference, error = %e, "voiding an unneeded authorization failed")
                }
                Err(_) => {
                    tracing::warn!(
                        module = "checkout",
                        reference,
                        timeout_ms = self.settings.timeout_ms,
                        "voiding an unneeded authorization got no answer in time"
                    )
                }
            }
        }
    }
}
