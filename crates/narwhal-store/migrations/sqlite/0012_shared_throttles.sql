-- Shared send throttles are for several nodes on PostgreSQL; SQLite is single-node and
-- keeps its bucket in memory. The tables exist here too (unused) so both schemas match.
CREATE TABLE mail_throttles (
    account TEXT PRIMARY KEY,
    units INTEGER NOT NULL,
    period_ms INTEGER NOT NULL,
    refilled_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE mail_throttle_minutes (
    account TEXT NOT NULL,
    minute INTEGER NOT NULL,
    sends INTEGER NOT NULL,
    PRIMARY KEY (account, minute)
) WITHOUT ROWID;
