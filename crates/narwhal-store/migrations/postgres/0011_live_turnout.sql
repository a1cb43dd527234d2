-- Live turnout and flushing lists.
-- gotv_universe carries each supporter's live report count and the time they count as
-- voted (NULL: still to turn out), kept by the ingest in the same transaction as the
-- reports (increments under the row lock, so concurrent nodes never lose a count), so
-- that remaining lists and turnout figures are indexed reads, not scans of reports.
ALTER TABLE gotv_universe ADD COLUMN live_reports BIGINT NOT NULL DEFAULT 0;
ALTER TABLE gotv_universe ADD COLUMN voted_at BIGINT;
UPDATE gotv_universe SET
    live_reports = (SELECT COUNT(*) FROM turnout_reports r WHERE r.person_id = gotv_universe.person_id AND r.undone_at IS NULL),
    voted_at = (SELECT MIN(r.voted_at) FROM turnout_reports r WHERE r.person_id = gotv_universe.person_id AND r.undone_at IS NULL);
CREATE INDEX gotv_universe_remaining ON gotv_universe (polling_place, person_id) WHERE voted_at IS NULL;
CREATE INDEX gotv_universe_geo ON gotv_universe (county, precinct, polling_place, voted_at);

-- The "latest change" every node polls to learn of reports taken by other nodes. A
-- sequence, bumped after each commit: no row lock serializes the ingest.
CREATE SEQUENCE turnout_change_seq;

-- Settings of election day shared by every node (the expected turnout curve).
CREATE TABLE turnout_settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Canvass turfs and call lists: named sets of GOTV supporters. What remains of a list
-- is its members not yet voted: flushing is a query.
CREATE TABLE gotv_lists (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('turf', 'calls')),
    name TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE gotv_list_members (
    list_id BIGINT NOT NULL REFERENCES gotv_lists (id) ON DELETE CASCADE,
    person_id BIGINT NOT NULL,
    PRIMARY KEY (list_id, person_id)
);
CREATE INDEX gotv_list_members_person ON gotv_list_members (person_id);
