-- Election day: polling places and the precincts they serve, the GOTV universe with
-- its voter codes, poll watchers, and turnout reports (idempotent by report_id).
CREATE TABLE polling_places (
    code TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    address TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- A precinct is named within its county; each votes at one polling place.
CREATE TABLE polling_place_precincts (
    county TEXT NOT NULL,
    precinct TEXT NOT NULL,
    polling_place TEXT NOT NULL REFERENCES polling_places (code),
    PRIMARY KEY (county, precinct)
) WITHOUT ROWID;
CREATE INDEX polling_place_precincts_place ON polling_place_precincts (polling_place);

-- Supporters to turn out. seq numbers them in build order; code is seq scrambled to a
-- unique 7-digit number (the voter code shown with a check digit).
CREATE TABLE gotv_universe (
    person_id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    code INTEGER NOT NULL UNIQUE,
    polling_place TEXT NOT NULL,
    county TEXT NOT NULL,
    precinct TEXT NOT NULL,
    added_at INTEGER NOT NULL
);
CREATE INDEX gotv_universe_place ON gotv_universe (polling_place, person_id);
CREATE INDEX gotv_universe_precinct ON gotv_universe (county, precinct);

-- A poll watcher: a volunteer login tied to one polling place. secret_hash is an
-- Argon2 PHC string for a PIN, or the SHA-256 hex of a login-link token.
CREATE TABLE watchers (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL UNIQUE,
    polling_place TEXT NOT NULL REFERENCES polling_places (code),
    kind TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX watchers_place ON watchers (polling_place);

-- One row per report_id, ever: a retry is a no-op. A voter has voted when any of
-- their reports is not undone.
CREATE TABLE turnout_reports (
    id INTEGER PRIMARY KEY,
    report_id TEXT NOT NULL UNIQUE,
    person_id INTEGER NOT NULL,
    polling_place TEXT NOT NULL,
    watcher_id INTEGER,
    channel TEXT NOT NULL,
    voted_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    undone_at INTEGER
);
CREATE INDEX turnout_reports_live ON turnout_reports (person_id) WHERE undone_at IS NULL;
CREATE INDEX turnout_reports_place ON turnout_reports (polling_place, received_at);
