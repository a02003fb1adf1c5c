//! Audit rows, collected per transaction; each backend inserts them with one
//! statement (see `postgres::audit` and `sqlite::audit`).

use uuid::Uuid;

/// Audit rows of one transaction, as column arrays.
#[derive(Debug, Default)]
pub struct AuditRows {
    pub(super) action: Vec<&'static str>,
    pub(super) card_id: Vec<Option<Uuid>>,
    pub(super) job_id: Vec<Option<Uuid>>,
    pub(super) batch_id: Vec<Option<Uuid>>,
    pub(super) from_state: Vec<Option<&'static str>>,
    pub(super) to_state: Vec<Option<&'static str>>,
    pub(super) card_state: Vec<Option<&'static str>>,
    pub(super) detail: Vec<Option<serde_json::Value>>,
}

pub use crate::domain::JobTransition;

impl AuditRows {
    pub fn len(&self) -> usize {
        self.action.len()
    }

    pub fn is_empty(&self) -> bool {
        self.action.is_empty()
    }

    pub fn push_job(
        &mut self,
        action: &'static str,
        t: JobTransition,
        detail: Option<serde_json::Value>,
    ) {
        self.action.push(action);
        self.card_id.push(Some(t.card_id));
        self.job_id.push(Some(t.job_id));
        self.batch_id.push(Some(t.batch_id));
        self.from_state.push(t.from);
        self.to_state.push(Some(t.to));
        self.card_state.push(t.card_state);
        self.detail.push(detail);
    }

    pub fn push_card(&mut self, action: &'static str, card_id: Uuid, card_state: &'static str) {
        self.action.push(action);
        self.card_id.push(Some(card_id));
        self.job_id.push(None);
        self.batch_id.push(None);
        self.from_state.push(None);
        self.to_state.push(None);
        self.card_state.push(Some(card_state));
        self.detail.push(None);
    }

    pub fn push_admin(&mut self, action: &'static str, detail: serde_json::Value) {
        self.action.push(action);
        self.card_id.push(None);
        self.job_id.push(None);
        self.batch_id.push(None);
        self.from_state.push(None);
        self.to_state.push(None);
        self.card_state.push(None);
        self.detail.push(Some(detail));
    }

    /// An access to a secret or a batch-wide action (PUK read, mailer
    /// release): who is the actor, the detail says why and how much, never what.
    pub fn push_access(
        &mut self,
        action: &'static str,
        ids: (Option<Uuid>, Option<Uuid>, Option<Uuid>),
        detail: serde_json::Value,
    ) {
        let (card_id, job_id, batch_id) = ids;
        self.action.push(action);
        self.card_id.push(card_id);
        self.job_id.push(job_id);
        self.batch_id.push(batch_id);
        self.from_state.push(None);
        self.to_state.push(None);
        self.card_state.push(None);
        self.detail.push(Some(detail));
    }
}

/// One row of the audit trail as listed by `GET /v1/audit`. Audit rows never
/// hold a secret: details name tokens, reasons, counts and states only.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    /// Who did it: a token name, or a component (`ledger`, `dispatcher`, ...).
    pub actor: String,
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// Which audit rows to list: those after `after` (an id) matching every
/// filter given, oldest first, at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub batch_id: Option<Uuid>,
    pub card_id: Option<Uuid>,
    pub action: Option<String>,
    pub after: i64,
    pub limit: i64,
}

impl super::Store {
    pub async fn list_audit(&self, filter: &AuditFilter) -> super::Result<Vec<AuditEntry>> {
        super::on_backend!(self, s => s.list_audit(filter).await)
    }
}

super::dialect::for_each_dialect! {
    impl Db {
        pub(in crate::store) async fn list_audit(
            &self,
            filter: &AuditFilter,
        ) -> crate::store::Result<Vec<AuditEntry>> {
            let rows = sqlx::query(
                "SELECT id, at, actor, action, card_id, job_id, batch_id, from_state, to_state, card_state, detail
                 FROM audit
                 WHERE id > $1 AND ($2 IS NULL OR batch_id = $2) AND ($3 IS NULL OR card_id = $3)
                   AND ($4 IS NULL OR action = $4)
                 ORDER BY id LIMIT $5",
            )
            .bind(filter.after)
            .bind(d::opt_id(filter.batch_id))
            .bind(d::opt_id(filter.card_id))
            .bind(&filter.action)
            .bind(filter.limit)
            .fetch_all(self.reader())
            .await?;
            rows.into_iter()
                .map(|r| {
                    Ok(AuditEntry {
                        id: r.try_get("id")?,
                        at: r.try_get("at")?,
                        actor: r.try_get("actor")?,
                        action: r.try_get("action")?,
                        card_id: r.opt_uuid("card_id")?,
                        job_id: r.opt_uuid("job_id")?,
                        batch_id: r.opt_uuid("batch_id")?,
                        from_state: r.try_get("from_state")?,
                        to_state: r.try_get("to_state")?,
                        card_state: r.try_get("card_state")?,
                        detail: r.json("detail")?,
                    })
                })
                .collect()
        }
    }
}
