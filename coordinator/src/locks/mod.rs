//! Resource locks: a lapsed lease is removed (and LOCK/EXPIRED fired) by the next decision
//! on its resource, or here, once a second, so that a lock nobody waits for does not show
//! as held for long after its holder stopped renewing it.
use tokio_postgres::Client;

use crate::api::{self, ApiError};

/// Expires lapsed leases on the control connection; quiet after the first refusal (a role
/// without EXECUTE on `herald.expire_locks`, or a database still at an older release).
#[derive(Debug, Default)]
pub struct Expiry {
    refused: bool,
}

impl Expiry {
    pub async fn run(&mut self, control: &Client) -> Result<(), ApiError> {
        if self.refused {
            return Ok(());
        }
        match api::expire_locks(control).await {
            Ok(0) => Ok(()),
            Ok(n) => {
                tracing::info!(expired = n, "lapsed resource locks expired");
                Ok(())
            }
            Err(ApiError::Database(e)) if e.as_db_error().is_some() => {
                tracing::warn!(
                    "resource locks: {}; lapsed leases are left to the next acquirer",
                    ApiError::Database(e)
                );
                self.refused = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
