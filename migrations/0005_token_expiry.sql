-- 0005: API tokens may expire.
-- Never edit this file once it has landed: add a new migration instead.

-- `orchestrator tokens create --expires-in 30d` (API: `expires_in`) sets it; null: the token
-- never expires (tokens created before this migration keep working as they did). A token
-- past its expiry is refused with 401 like a revoked one, and stays in the table (its name
-- stays taken) so the audit log keeps meaning.
ALTER TABLE api_tokens ADD COLUMN expires_at timestamptz;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_expiry_after_creation
    CHECK (expires_at IS NULL OR expires_at > created_at);
