-- Dead letters keep the message byte-exact (`raw`, binary-safe: a NUL byte or
-- invalid UTF-8 cannot fail the insert) and are recorded once per content
-- key, however often the same message is redelivered or dead-lettered again.
-- `payload` stays the redacted, readable view. Rows from before this
-- migration have no raw bytes and no key.
ALTER TABLE dead_letters ADD COLUMN raw BLOB;
ALTER TABLE dead_letters ADD COLUMN content_key TEXT;
CREATE UNIQUE INDEX dead_letters_content_key ON dead_letters (content_key);
