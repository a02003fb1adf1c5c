//! The OpenAPI document, generated from the handlers and their types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::error::ErrorBody;
use crate::api::routes::{
    audit, cards, enrollment_tokens, escrow, initializations, me, processes, racks, redrive, tokens,
};
use crate::domain::{CardState, JobState};
use crate::store::audit::AuditEntry;
use crate::store::cards::{CardDetail, CardSummary, ImportOutcome, JobHistoryEntry, RowRejection};
use crate::store::escrow::MailerReopen;
use crate::store::initialize::{CancelOutcome, CardRejection, InitializeOutcome};
use crate::store::racks::{BatchCard, BatchStatus, DeadLetterView, RackView, SlotView};
use crate::store::tokens::{Role, TokenView};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cardfleet",
        description = "Initialize temporary smart cards at production scale. Every /v1 \
            endpoint needs `Authorization: Bearer <token>` (401 `unauthenticated` without a valid \
            token, 403 `forbidden` without the role): admin (process enablement, tokens, reopening \
            PIN mailers), operator (cards, initializations, racks, dead letters), officer (PUK \
            escrow, PIN mailers), auditor (audit trail), worker (rack enrollment only)."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    paths(
        cards::import,
        cards::list,
        cards::detail,
        processes::get_process,
        processes::put_process,
        initializations::submit,
        initializations::status,
        initializations::events,
        initializations::cancel_batch,
        initializations::cancel_card,
        racks::list,
        racks::dead_letters,
        racks::release_slot,
        racks::enroll,
        escrow::puk,
        escrow::pin_mailers,
        escrow::reopen_mailers,
        audit::list,
        tokens::list,
        tokens::create,
        tokens::revoke,
        me::me,
        redrive::redrive,
        enrollment_tokens::create,
    ),
    components(schemas(
        ErrorBody,
        CardState,
        JobState,
        CardSummary,
        CardDetail,
        crate::store::public_keys::CardPublicKey,
        JobHistoryEntry,
        ImportOutcome,
        RowRejection,
        cards::ImportRequest,
        cards::ImportCard,
        processes::ProcessSetting,
        initializations::InitializeRequest,
        initializations::InitializeFilter,
        InitializeOutcome,
        CardRejection,
        CancelOutcome,
        BatchStatus,
        BatchCard,
        RackView,
        SlotView,
        DeadLetterView,
        racks::EnrollmentRequest,
        racks::Enrollment,
        escrow::PukResponse,
        escrow::MailerFormat,
        MailerReopen,
        AuditEntry,
        Role,
        TokenView,
        tokens::CreateToken,
        tokens::CreatedToken,
        me::Me,
        redrive::Redriven,
        enrollment_tokens::EnrollmentTokenRequest,
        enrollment_tokens::EnrollmentToken,
    ))
)]
#[derive(Debug)]
pub struct ApiDoc;

/// The bearer token scheme every `/v1` endpoint requires.
#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("an API token: cardfleet tokens create"))
                    .build(),
            ),
        );
    }
}
