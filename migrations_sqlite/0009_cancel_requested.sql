-- Cancellation is a request once a job has left for a rack: the job keeps
-- its state (dispatched or encoding) and records when the cancel was asked
-- for. The worker's answer decides: a result wins (the card keeps its
-- credentials), a "cancelled" outcome means the card was never touched.
ALTER TABLE jobs ADD COLUMN cancel_requested_at TEXT;
