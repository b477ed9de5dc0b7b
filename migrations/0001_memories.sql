-- Memories: what agents store and recall, one namespace (agent or team) per row.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE memories (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    namespace   text        NOT NULL,
    content     text        NOT NULL CHECK (length(content) > 0),
    memory_type text        NOT NULL DEFAULT 'general',
    importance  real        NOT NULL DEFAULT 0.5 CHECK (importance >= 0 AND importance <= 1),
    tags        text[]      NOT NULL DEFAULT '{}',
    metadata    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The operations guide's indexes (the vector index arrives with the embedding column).
CREATE INDEX idx_memory_content_pattern ON memories USING gin (to_tsvector('english', content));
CREATE INDEX idx_memory_importance_created ON memories (importance DESC, created_at DESC);
CREATE INDEX idx_memory_tags ON memories USING gin (tags);
-- Every read is scoped to one namespace.
CREATE INDEX idx_memory_namespace_created ON memories (namespace, created_at DESC);
