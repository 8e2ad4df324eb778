-- The format version a row was last written in by shiftkey: once it is 3, a payload of an older
-- version in that row is a restored or replayed one and is refused (docs/store-format.md).
ALTER TABLE shiftkey_tokens ADD COLUMN IF NOT EXISTS format SMALLINT NOT NULL DEFAULT 0;
