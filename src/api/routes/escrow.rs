//! Secrets handed to people under audit: PUK escrow for officers and the
//! PIN mailers of a finished batch (released once; an admin may reopen).

use cardfleet_schemas::codes::Code;
use std::fmt::Write as _;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::AppState;
use crate::api::error::{ApiError, ApiQuery, IdPath};
use crate::store::StoreError;
use crate::store::escrow::{MAX_REASON_CHARS, MailerRelease, MailerReopen};
use crate::store::tokens::Caller;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PukQuery {
    /// Why the PUK is needed (1 to 500 characters, not only spaces);
    /// recorded in the audit trail.
    #[param(
        required = true,
        min_length = 1,
        max_length = 500,
        pattern = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"
    )]
    pub reason: Option<String>,
}

/// A card's escrowed PUK.
#[derive(Debug, Serialize, ToSchema)]
pub struct PukResponse {
    pub card_id: Uuid,
    /// The job whose credentials are on the card.
    pub job_id: Uuid,
    pub puk: String,
}

/// Sets `Cache-Control: no-store` on an answer that carries a secret.
fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The PUK of the card's active credentials (role officer). Every read is
/// audited as `credential.puk_read` with the token's name and the reason.
#[utoipa::path(get, path = "/v1/cards/{card_id}/puk", tag = "escrow",
    params(("card_id" = Uuid, Path), PukQuery),
    responses((status = 200, body = PukResponse),
              (status = 400, description = "reason_required", body = crate::api::error::ErrorBody),
              (status = 404, description = "the card has no active credentials", body = crate::api::error::ErrorBody)))]
pub async fn puk(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(card_id): IdPath<Uuid>,
    ApiQuery(q): ApiQuery<PukQuery>,
) -> Result<Response, ApiError> {
    let reason = q.reason.as_deref().map(str::trim).unwrap_or_default();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::new(
            Code::ReasonRequired,
            format!("give ?reason= (1 to {MAX_REASON_CHARS} characters): why the PUK is needed"),
        ));
    }
    let escrowed = state
        .store
        .read_puk(card_id, reason, &state.cipher, &caller.name)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => {
                ApiError::new(Code::NotFound, "the card has no active credentials")
            }
            e => e.into(),
        })?;
    tracing::info!(card.id = %card_id, actor = %caller.name, "PUK read from escrow");
    Ok(no_store(
        Json(PukResponse {
            card_id,
            job_id: escrowed.job_id,
            puk: escrowed.puk.expose().to_owned(),
        })
        .into_response(),
    ))
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MailerFormat {
    Csv,
    Html,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MailerQuery {
    /// `csv` (default) or `html` (one printable letter per card).
    pub format: Option<MailerFormat>,
}

fn unknown_batch(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::new(Code::UnknownBatch, "no batch with this id"),
        e => e.into(),
    }
}

/// Releases the PINs of a finished batch's succeeded cards (role officer):
/// CSV `card_number,chip_serial,pin` or a printable HTML page with one
/// letter per card. Once only: a second release is refused until an admin
/// reopens it. The released PINs are then destroyed unless the profile
/// keeps them (`keep_pins_after_mailer`). Headers `X-Cardfleet-Letters` and
/// `X-Cardfleet-Pins-Destroyed` say how many PINs were released and how many
/// an earlier release destroyed (they are not in this release).
#[utoipa::path(post, path = "/v1/initializations/{batch_id}/pin-mailers", tag = "escrow",
    params(("batch_id" = Uuid, Path), MailerQuery),
    responses((status = 200, content_type = "text/csv", description = "the letters (text/csv or text/html)"),
              (status = 404, description = "unknown_batch", body = crate::api::error::ErrorBody),
              (status = 409, description = "batch_not_finished, mailers_already_released or pins_destroyed", body = crate::api::error::ErrorBody)))]
pub async fn pin_mailers(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(batch_id): IdPath<Uuid>,
    ApiQuery(q): ApiQuery<MailerQuery>,
) -> Result<Response, ApiError> {
    let format = q.format.unwrap_or(MailerFormat::Csv);
    let format_name = match format {
        MailerFormat::Csv => "csv",
        MailerFormat::Html => "html",
    };
    let release = state
        .store
        .release_mailers(
            batch_id,
            format_name,
            &state.profiles,
            &state.cipher,
            &caller.name,
        )
        .await
        .map_err(unknown_batch)?;
    tracing::info!(batch.id = %batch_id, actor = %caller.name, letters = release.letters.len(),
        pins_destroyed = release.pins_destroyed_now, format = format_name, "PIN mailers released");
    let (content_type, body) = match format {
        MailerFormat::Csv => ("text/csv; charset=utf-8", render_csv(&release)?),
        MailerFormat::Html => ("text/html; charset=utf-8", render_html(batch_id, &release)),
    };
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"pin-mailers-{batch_id}-{}.{format_name}\"",
        release.release
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert("x-cardfleet-letters", release.letters.len().into());
    headers.insert(
        "x-cardfleet-pins-destroyed",
        release.pins_destroyed_before.into(),
    );
    Ok(no_store(response))
}

fn render_csv(release: &MailerRelease) -> Result<String, ApiError> {
    let mut out = csv::Writer::from_writer(Vec::new());
    let write = |out: &mut csv::Writer<Vec<u8>>, row: [&str; 3]| {
        out.write_record(row)
            .map_err(|_| ApiError::new(Code::Internal, "the letters could not be written"))
    };
    write(&mut out, ["card_number", "chip_serial", "pin"])?;
    for l in &release.letters {
        write(&mut out, [&l.card_number, &l.chip_serial, l.pin.expose()])?;
    }
    let bytes = out.into_inner().unwrap_or_default();
    Ok(String::from_utf8(bytes).unwrap_or_default())
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn render_html(batch_id: Uuid, release: &MailerRelease) -> String {
    let mut html = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>PIN letters</title><style>\
         body{font-family:sans-serif;margin:0}\
         .letter{page-break-after:always;break-after:page;padding:2cm}\
         .pin{font-family:monospace;font-size:2em;letter-spacing:.2em}\
         .note{padding:2cm;color:#800}\
         </style></head><body>\n",
    );
    if release.pins_destroyed_before > 0 {
        let _ = writeln!(
            html,
            "<p class=\"note\">{} PINs of this batch were destroyed after an earlier release and are not in these letters.</p>",
            release.pins_destroyed_before
        );
    }
    for l in &release.letters {
        let _ = writeln!(
            html,
            "<section class=\"letter\"><h1>Your card PIN</h1>\
             <p>Card number: <strong>{}</strong><br>Chip serial: {}</p>\
             <p>PIN: <span class=\"pin\">{}</span></p>\
             <p>Keep this PIN secret and apart from the card. Never write it on the card. \
             After three wrong entries the card locks; your card office can unlock it.</p>\
             <p><small>Batch {}</small></p></section>",
            escape(&l.card_number),
            escape(&l.chip_serial),
            escape(l.pin.expose()),
            escape(&batch_id.to_string()),
        );
    }
    html.push_str("</body></html>\n");
    html
}

/// Lets the batch's PIN mailers be released once more (role admin),
/// audited as `mailers.reopened`. PINs destroyed after the earlier release
/// stay destroyed: the answer says how many are left.
#[utoipa::path(post, path = "/v1/initializations/{batch_id}/pin-mailers/reopen", tag = "escrow",
    params(("batch_id" = Uuid, Path)),
    responses((status = 200, body = MailerReopen),
              (status = 404, description = "unknown_batch", body = crate::api::error::ErrorBody),
              (status = 409, description = "mailers_not_released", body = crate::api::error::ErrorBody)))]
pub async fn reopen_mailers(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(batch_id): IdPath<Uuid>,
) -> Result<Json<MailerReopen>, ApiError> {
    let reopened = state
        .store
        .reopen_mailers(batch_id, &caller.name)
        .await
        .map_err(unknown_batch)?;
    tracing::info!(batch.id = %batch_id, actor = %caller.name, "PIN mailers reopened");
    Ok(Json(reopened))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<b>&\"x'</b>"),
            "&lt;b&gt;&amp;&quot;x&#39;&lt;/b&gt;"
        );
    }
}
