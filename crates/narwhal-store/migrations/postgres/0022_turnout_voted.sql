-- Election day at scale: who has voted is a narrow row per voter, inserted once,
-- instead of an update of the voter's universe row per report.
-- Updating gotv_universe.voted_at wrote a new version of the whole row (it is in
-- indexes, so never a HOT update) with entries in its four indexes, after a row lock,
-- and fired the tally trigger. Now a report inserts its own row and, for a voter's
-- first live report, one row here: the primary key is also what makes two concurrent
-- first reports of one voter count once. The ingest keeps the per-precinct tallies
-- itself, one aggregated upsert per group commit, and lists anti-join this table.
-- A row exists exactly while the voter has a report that is not undone; voted_at is
-- the earliest voted time of those reports.
CREATE TABLE turnout_voted (
    person_id BIGINT PRIMARY KEY,
    voted_at BIGINT NOT NULL
);
INSERT INTO turnout_voted (person_id, voted_at)
    SELECT person_id, voted_at FROM gotv_universe WHERE voted_at IS NOT NULL;

-- Universe rows are no longer updated. Adding (or deleting) supporters still moves
-- the tallies: the universe cell (hour -1) and, for a supporter who already voted,
-- their voted hour.
DROP TRIGGER turnout_tallies_insert ON gotv_universe;
DROP TRIGGER turnout_tallies_update ON gotv_universe;
DROP TRIGGER turnout_tallies_delete ON gotv_universe;
DROP FUNCTION turnout_tallies_apply();

CREATE FUNCTION turnout_universe_tallies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO turnout_tallies AS t (county, precinct, polling_place, hour, people)
        SELECT county, precinct, polling_place, hour, SUM(n) FROM (
            SELECT county, precinct, polling_place, -1 AS hour, 1 AS n FROM new_rows
            UNION ALL
            SELECT r.county, r.precinct, r.polling_place, v.voted_at / 3600000, 1
            FROM new_rows r JOIN turnout_voted v ON v.person_id = r.person_id
        ) d GROUP BY county, precinct, polling_place, hour
        ORDER BY county, precinct, polling_place, hour
        ON CONFLICT (county, precinct, polling_place, hour) DO UPDATE SET people = t.people + excluded.people;
    ELSE
        INSERT INTO turnout_tallies AS t (county, precinct, polling_place, hour, people)
        SELECT county, precinct, polling_place, hour, SUM(n) FROM (
            SELECT county, precinct, polling_place, -1 AS hour, -1 AS n FROM old_rows
            UNION ALL
            SELECT r.county, r.precinct, r.polling_place, v.voted_at / 3600000, -1
            FROM old_rows r JOIN turnout_voted v ON v.person_id = r.person_id
        ) d GROUP BY county, precinct, polling_place, hour
        ORDER BY county, precinct, polling_place, hour
        ON CONFLICT (county, precinct, polling_place, hour) DO UPDATE SET people = t.people + excluded.people;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER turnout_universe_insert AFTER INSERT ON gotv_universe
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION turnout_universe_tallies();
CREATE TRIGGER turnout_universe_delete AFTER DELETE ON gotv_universe
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION turnout_universe_tallies();

-- The voted state left the universe, and with it the indexes over it.
DROP INDEX gotv_universe_remaining;
DROP INDEX gotv_universe_geo;
ALTER TABLE gotv_universe DROP COLUMN live_reports, DROP COLUMN voted_at;
CREATE INDEX gotv_universe_precinct ON gotv_universe (county, precinct);

-- Reports are found by report_id (unique) and, live ones, by person; the serial id
-- served no query and cost a sequence step and an index entry per report.
ALTER TABLE turnout_reports DROP COLUMN id;
