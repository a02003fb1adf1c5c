//! Process settings: whether a process (today only initialize) may start
//! new work; an enable or disable is audited.

use super::{AuditRows, Result, StoreError};

/// The audit row of an enable or disable.
pub(super) fn process_audit(name: &str, enabled: bool) -> AuditRows {
    let mut audit = AuditRows::default();
    audit.push_admin(
        if enabled {
            "process.enabled"
        } else {
            "process.disabled"
        },
        serde_json::json!({ "process": name }),
    );
    audit
}

super::dialect::for_each_dialect! {
    impl Db {
        pub(in crate::store) async fn process_enabled(&self, name: &str) -> Result<bool> {
            let enabled: Option<bool> =
                sqlx::query_scalar("SELECT enabled FROM process_settings WHERE name = $1")
                    .bind(name)
                    .fetch_optional(self.reader())
                    .await?;
            enabled.ok_or(StoreError::NotFound)
        }

        pub(in crate::store) async fn set_process_enabled(
            &self,
            name: &str,
            enabled: bool,
            actor: &str,
        ) -> Result<()> {
            let mut tx = self.write().await?;
            let before: Option<bool> = sqlx::query_scalar(concat!(
                "SELECT enabled FROM process_settings WHERE name = $1",
                d::for_update!()
            ))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
            let before = before.ok_or(StoreError::NotFound)?;
            if before != enabled {
                sqlx::query(concat!(
                    "UPDATE process_settings SET enabled = $2, updated_at = ",
                    d::now!(),
                    " WHERE name = $1"
                ))
                .bind(name)
                .bind(enabled)
                .execute(&mut *tx)
                .await?;
                d::insert_audit(&mut tx, process_audit(name, enabled), actor).await?;
            }
            tx.commit().await?;
            Ok(())
        }
    }
}
