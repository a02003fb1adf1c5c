-- A card whose chip may hold the new credentials of a job that did not
-- succeed (a failure after a write step, or a job the broker gave up on)
-- is `in_doubt`: its credentials stay escrowed (status `pending`, never
-- revoked) until an operator runs the job again or resets the card with
-- the escrowed PUK.
ALTER TABLE cards DROP CONSTRAINT cards_state_check;
ALTER TABLE cards ADD CONSTRAINT cards_state_check
    CHECK (state IN ('produced', 'initializing', 'unassigned', 'failed', 'in_doubt'));
