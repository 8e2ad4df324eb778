-- One row per credential: the encrypted token (same format as the file store) and its generation.
CREATE TABLE IF NOT EXISTS shiftkey_tokens (
    credential  TEXT PRIMARY KEY,
    generation  BIGINT NOT NULL DEFAULT 0,
    payload     BYTEA NOT NULL DEFAULT ''::bytea,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
