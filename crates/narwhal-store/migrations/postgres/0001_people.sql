-- The people hub: people, their keys, tags, lists, segments, provenance sources,
-- merges, the audit log, logins, jobs, imports and inbound payloads.
CREATE TABLE sources (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE people (
    id BIGSERIAL PRIMARY KEY,
    voter_id TEXT UNIQUE,
    first_name TEXT, middle_name TEXT, last_name TEXT, suffix TEXT,
    search_name TEXT NOT NULL DEFAULT '',
    email TEXT,
    phone TEXT,
    addr_line1 TEXT, addr_line2 TEXT, city TEXT, state TEXT, zip TEXT, county TEXT, precinct TEXT,
    addr_key TEXT,
    email_consent TEXT NOT NULL DEFAULT 'unknown',
    sms_consent TEXT NOT NULL DEFAULT 'unknown',
    custom TEXT NOT NULL DEFAULT '{}',
    provenance TEXT NOT NULL DEFAULT '{}',
    row_hash BIGINT NOT NULL DEFAULT 0,
    version BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX people_geo ON people (state, county, precinct);
CREATE INDEX people_search ON people (search_name text_pattern_ops);
CREATE INDEX people_last ON people (lower(last_name));
CREATE INDEX people_addr ON people (addr_key);
CREATE INDEX people_email_consent ON people (email_consent);

CREATE TABLE person_emails (
    email TEXT PRIMARY KEY,
    person_id BIGINT NOT NULL,
    source_id BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX person_emails_person ON person_emails (person_id);

CREATE TABLE person_phones (
    phone TEXT PRIMARY KEY,
    person_id BIGINT NOT NULL,
    source_id BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX person_phones_person ON person_phones (person_id);

CREATE TABLE tags (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE person_tags (
    person_id BIGINT NOT NULL,
    tag_id BIGINT NOT NULL,
    PRIMARY KEY (person_id, tag_id)
);
CREATE INDEX person_tags_tag ON person_tags (tag_id, person_id);

CREATE TABLE lists (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);

CREATE TABLE list_members (
    list_id BIGINT NOT NULL,
    person_id BIGINT NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (list_id, person_id)
);
CREATE INDEX list_members_person ON list_members (person_id);

CREATE TABLE segments (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    filter TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE merges (
    id BIGSERIAL PRIMARY KEY,
    survivor_id BIGINT NOT NULL,
    merged_id BIGINT NOT NULL,
    survivor_before TEXT NOT NULL,
    merged_snapshot TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    undone_at BIGINT,
    undone_by TEXT
);
CREATE INDEX merges_survivor ON merges (survivor_id);

CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_entity ON audit_log (entity, entity_id);

CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL DEFAULT 5,
    run_after BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    progress_done BIGINT NOT NULL DEFAULT 0,
    progress_total BIGINT NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX jobs_ready ON jobs (state, run_after);

CREATE TABLE imports (
    id BIGSERIAL PRIMARY KEY,
    job_id BIGINT,
    source_name TEXT NOT NULL,
    path TEXT NOT NULL,
    mapping TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    bytes_total BIGINT NOT NULL DEFAULT 0,
    bytes_read BIGINT NOT NULL DEFAULT 0,
    rows_read BIGINT NOT NULL DEFAULT 0,
    inserted BIGINT NOT NULL DEFAULT 0,
    updated BIGINT NOT NULL DEFAULT 0,
    unchanged BIGINT NOT NULL DEFAULT 0,
    merged BIGINT NOT NULL DEFAULT 0,
    rejected BIGINT NOT NULL DEFAULT 0,
    rejects_path TEXT,
    error TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);

CREATE TABLE inbound_payloads (
    id BIGSERIAL PRIMARY KEY,
    source TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'received',
    attempts BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    person_id BIGINT,
    received_at BIGINT NOT NULL,
    processed_at BIGINT,
    UNIQUE (source, idem_key)
);
CREATE INDEX inbound_state ON inbound_payloads (state, id);
