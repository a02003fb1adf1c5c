//! The OpenAPI document, generated from the handlers and their types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::error::ErrorBody;
use crate::api::routes::{
    audit, cards, enrollment_tokens, escrow, in_doubt, initializations, me, processes, racks,
    redrive, tokens,
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
    modifiers(&BearerAuth, &CommonResponses),
    security(("bearer" = [])),
    paths(
        cards::import,
        cards::list,
        cards::detail,
        in_doubt::rerun,
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
        initializations::InitializeRequestBody,
        initializations::InitializeByIds,
        initializations::InitializeByFilter,
        initializations::InitializeFilter,
        InitializeOutcome,
        CardRejection,
        CancelOutcome,
        in_doubt::Rerun,
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

/// The document as served: the generated one with the limits of this
/// server's configuration (most cards per request) filled in.
pub fn document(max_batch_cards: usize) -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let schemas = &mut doc["components"]["schemas"];
    if let Some(limit) = schemas["InitializeFilter"]["properties"].get_mut("limit") {
        limit["maximum"] = max_batch_cards.into();
    }
    if let Some(ids) = schemas["InitializeByIds"]["properties"].get_mut("card_ids") {
        ids["maxItems"] = max_batch_cards.into();
    }
    doc
}

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

/// The statuses every operation can answer with besides its own, so the
/// document lists every status the API returns (the fuzzer checks it):
/// 401, 403 and 429 on every `/v1` operation; 400 wherever a path, query or
/// body is parsed; 404 wherever a path names something; 413 and 415 wherever
/// a body is read; 500 everywhere.
#[derive(Debug)]
struct CommonResponses;

impl CommonResponses {
    const STATUSES: [(&'static str, &'static str); 8] = [
        ("400", "invalid input: see the error code"),
        (
            "401",
            "unauthenticated: no token, or an unknown, revoked or expired one",
        ),
        ("403", "forbidden: the token lacks the role"),
        ("404", "no such resource"),
        ("413", "payload_too_large or batch_too_large"),
        ("415", "unsupported_media_type"),
        ("429", "too many requests for this token"),
        ("500", "internal: details only in the server log"),
    ];

    fn applies(status: &str, path: &str, operation: &utoipa::openapi::path::Operation) -> bool {
        let versioned = path.starts_with("/v1/");
        let has_params =
            path.contains('{') || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
        let has_body = operation.request_body.is_some();
        match status {
            "401" | "403" | "429" => versioned,
            "400" => has_params || has_body,
            "404" => path.contains('{'),
            "413" | "415" => has_body,
            _ => true,
        }
    }
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, description) in Self::STATUSES {
                    if !Self::applies(status, path, operation) {
                        continue;
                    }
                    let response = ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorBody")))
                                .build(),
                        )
                        .build();
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| response.into());
                }
            }
        }
    }
}
