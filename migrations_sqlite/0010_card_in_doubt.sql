-- A card whose chip may hold the new credentials of a job that did not
-- succeed (a failure after a write step, or a job the broker gave up on)
-- is `in_doubt`: its credentials stay escrowed (status `pending`, never
-- revoked) until an operator runs the job again or resets the card with
-- the escrowed PUK.
--
-- SQLite cannot alter a CHECK constraint. Widening it changes nothing on
-- disk, so the stored table definition is edited in place (the procedure of
-- https://sqlite.org/lang_altertable.html#otheralter); unlike a table
-- rebuild, it keeps every column other migrations added to `cards`.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
   SET sql = replace(sql, '''unassigned'', ''failed'')', '''unassigned'', ''failed'', ''in_doubt'')')
 WHERE type = 'table' AND name = 'cards';
PRAGMA writable_schema = RESET;
-- Any schema change bumps the schema cookie, so every open connection
-- reloads the edited definition.
CREATE TABLE in_doubt_schema_bump (x INTEGER);
DROP TABLE in_doubt_schema_bump;
