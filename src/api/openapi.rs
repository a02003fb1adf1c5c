//! The OpenAPI document, generated from the handlers and their types.

use utoipa::OpenApi;

use crate::api::error::ErrorBody;
use crate::api::routes::{cards, initializations, processes, racks};
use crate::domain::{CardState, JobState};
use crate::store::cards::{CardDetail, CardSummary, ImportOutcome, JobHistoryEntry, RowRejection};
use crate::store::initialize::{CancelOutcome, CardRejection, InitializeOutcome};
use crate::store::racks::{BatchCard, BatchStatus, DeadLetterView, RackView, SlotView};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cardfleet",
        description = "Initialize temporary smart cards at production scale"
    ),
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
    ),
    components(schemas(
        ErrorBody,
        CardState,
        JobState,
        CardSummary,
        CardDetail,
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
    ))
)]
#[derive(Debug)]
pub struct ApiDoc;
