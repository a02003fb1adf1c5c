//! Card stock: import from a production file (JSON or CSV), search, detail.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use cardfleet_schemas::codes::Code;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::api::AppState;
use crate::api::error::{ApiError, ApiQuery, IdPath};
use crate::domain::CardState;
use crate::store::StoreError;
use crate::store::cards::{
    CardDetail, CardFilter, CardSummary, ImportOutcome, ImportRow, RowRejection,
};
use crate::store::tokens::Caller;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub cards: Vec<ImportCard>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportCard {
    pub card_number: String,
    pub chip_serial: String,
    pub card_type: String,
    pub profile: String,
}

/// The CSV header of a production file.
pub const CSV_HEADER: [&str; 4] = ["card_number", "chip_serial", "card_type", "profile"];

/// The CSV body of an import: the header line, then one card per line.
#[derive(Debug)]
pub struct CsvImport;

impl utoipa::PartialSchema for CsvImport {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^card_number,chip_serial,card_type,profile(\r?\n|$)"))
            .description(Some(
                "`card_number,chip_serial,card_type,profile`, then one card per line",
            ))
            .into()
    }
}

impl ToSchema for CsvImport {}

#[utoipa::path(post, path = "/v1/cards/import", tag = "cards",
    request_body(content(
        (ImportRequest = "application/json"),
        (CsvImport = "text/csv", example = "card_number,chip_serial,card_type,profile\nTC-1,CHIP-1,temporary,temporary-piv\n"))),
    responses((status = 200, body = ImportOutcome), (status = 400, body = crate::api::error::ErrorBody),
              (status = 413, body = crate::api::error::ErrorBody)))]
pub async fn import(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<ImportOutcome>, ApiError> {
    let body = body.map_err(crate::api::error::from_bytes_rejection)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (rows, mut rejected) = if content_type.starts_with("text/csv") {
        parse_csv(&body)?
    } else if content_type.starts_with("application/json") {
        let request: ImportRequest = serde_json::from_slice(&body).map_err(|e| {
            let code = if e.is_data() {
                Code::InvalidRequest
            } else {
                Code::MalformedJson
            };
            ApiError::new(code, format!("request body: {e}"))
        })?;
        let rows = request
            .cards
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    i + 1,
                    ImportRow {
                        card_number: c.card_number,
                        chip_serial: c.chip_serial,
                        card_type: c.card_type,
                        profile: c.profile,
                    },
                )
            })
            .collect::<Vec<_>>();
        (rows, Vec::new())
    } else {
        return Err(ApiError::new(
            Code::UnsupportedMediaType,
            "send application/json or text/csv",
        ));
    };
    if rows.len() + rejected.len() > state.max_batch_cards {
        return Err(ApiError::new(
            Code::BatchTooLarge,
            format!("at most {} cards per import", state.max_batch_cards),
        ));
    }
    let mut outcome = state
        .store
        .import_cards(rows, &state.profiles, &caller.name)
        .await?;
    state.metrics.cards_imported.inc_by(outcome.imported as u64);
    rejected.append(&mut outcome.rejected);
    rejected.sort_by_key(|r| r.row);
    outcome.rejected = rejected;
    Ok(Json(outcome))
}

/// Parses a production CSV. A bad header refuses the file; a bad row is
/// reported and the others are imported.
/// Numbered rows of a production file and the rows refused while parsing.
type ParsedRows = (Vec<(usize, ImportRow)>, Vec<RowRejection>);

fn parse_csv(body: &[u8]) -> Result<ParsedRows, ApiError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(body);
    let header = reader
        .byte_headers()
        .map_err(|e| ApiError::new(Code::MalformedCsv, format!("CSV header: {e}")))?
        .clone();
    let names: Vec<String> = header
        .iter()
        .map(|f| String::from_utf8_lossy(f).trim().to_owned())
        .collect();
    if names != CSV_HEADER {
        return Err(ApiError::new(
            Code::MalformedCsv,
            format!("CSV header must be {}", CSV_HEADER.join(",")),
        ));
    }
    let mut rows = Vec::new();
    let mut rejected = Vec::new();
    for (i, record) in reader.byte_records().enumerate() {
        let row = i + 1;
        let reject = |message: String| RowRejection {
            row,
            code: Code::Malformed.as_str(),
            message,
        };
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                rejected.push(reject(format!("unreadable row: {e}")));
                continue;
            }
        };
        if record.len() != 4 {
            rejected.push(reject(format!("expected 4 fields, got {}", record.len())));
            continue;
        }
        let fields: Result<Vec<&str>, _> = record.iter().map(std::str::from_utf8).collect();
        match fields {
            Ok(f) => rows.push((
                row,
                ImportRow {
                    card_number: f[0].to_owned(),
                    chip_serial: f[1].to_owned(),
                    card_type: f[2].to_owned(),
                    profile: f[3].to_owned(),
                },
            )),
            Err(_) => rejected.push(reject("row is not valid UTF-8".into())),
        }
    }
    Ok((rows, rejected))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Card type, e.g. `temporary`.
    #[serde(rename = "type")]
    #[param(max_length = 64, pattern = "^[^\\u0000]*$")]
    pub card_type: Option<String>,
    /// `produced`, `initializing`, `unassigned` or `failed`.
    #[param(value_type = Option<CardState>)]
    pub state: Option<String>,
    /// Exact card number.
    #[param(pattern = "^[^\\u0000]*$")]
    pub card_number: Option<String>,
    /// Exact chip serial.
    #[param(pattern = "^[^\\u0000]*$")]
    pub chip_serial: Option<String>,
    /// Cards with a job in this initialize request.
    pub batch_id: Option<Uuid>,
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Items to skip, 0 to 10,000,000 (default 0).
    #[param(minimum = 0, maximum = 10000000)]
    pub offset: Option<i64>,
}

#[utoipa::path(get, path = "/v1/cards", tag = "cards", operation_id = "list_cards", params(ListQuery),
    responses((status = 200, body = Vec<CardSummary>), (status = 400, body = crate::api::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<CardSummary>>, ApiError> {
    let (limit, offset) = crate::api::error::Paging {
        limit: q.limit,
        offset: q.offset,
    }
    .resolve()?;
    if q.card_type.as_ref().is_some_and(|t| t.chars().count() > 64) {
        return Err(ApiError::new(
            Code::InvalidQuery,
            "type must be at most 64 characters",
        ));
    }
    let card_state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(CardState::parse(s).ok_or_else(|| {
            ApiError::new(
                Code::InvalidQuery,
                "state must be produced, initializing, unassigned or failed",
            )
        })?),
    };
    let filter = CardFilter {
        card_type: q.card_type,
        state: card_state,
        card_number: non_empty(q.card_number),
        chip_serial: non_empty(q.chip_serial),
        batch_id: q.batch_id,
        limit,
        offset,
    };
    Ok(Json(state.store.list_cards(&filter).await?))
}

/// A search field left empty means "any".
fn non_empty(field: Option<String>) -> Option<String> {
    field.map(|f| f.trim().to_owned()).filter(|f| !f.is_empty())
}

#[utoipa::path(get, path = "/v1/cards/{card_id}", tag = "cards",
    params(("card_id" = Uuid, Path)),
    responses((status = 200, body = CardDetail), (status = 404, body = crate::api::error::ErrorBody)))]
pub async fn detail(
    State(state): State<AppState>,
    IdPath(card_id): IdPath<Uuid>,
) -> Result<Json<CardDetail>, ApiError> {
    match state.store.card_detail(card_id).await {
        Ok(d) => Ok(Json(d)),
        Err(StoreError::NotFound) => Err(ApiError::new(Code::UnknownCard, "no card with this id")),
        Err(e) => Err(e.into()),
    }
}
