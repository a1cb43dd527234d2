-- Election day at scale: who has voted is a narrow row per voter, inserted once,
-- instead of an update of the voter's universe row per report (which rewrote the row
-- and its index entries and ran two tally statements per voter in triggers). The
-- ingest keeps the per-precinct tallies itself, one aggregated upsert per group
-- commit, and lists anti-join this table. A row exists exactly while the voter has a
-- report that is not undone; voted_at is the earliest voted time of those reports.
CREATE TABLE turnout_voted (
    person_id INTEGER PRIMARY KEY,
    voted_at INTEGER NOT NULL
);
INSERT INTO turnout_voted (person_id, voted_at)
    SELECT person_id, voted_at FROM gotv_universe WHERE voted_at IS NOT NULL;

-- Universe rows are no longer updated. Adding (or deleting) supporters still moves
-- the tallies: the universe cell (hour -1) and, for a supporter who already voted,
-- their voted hour.
DROP TRIGGER turnout_tallies_insert;
DROP TRIGGER turnout_tallies_delete;
DROP TRIGGER turnout_tallies_voted;
DROP TRIGGER turnout_tallies_moved;

CREATE TRIGGER turnout_universe_insert AFTER INSERT ON gotv_universe BEGIN
    INSERT INTO turnout_tallies (county, precinct, polling_place, hour, people)
        VALUES (new.county, new.precinct, new.polling_place, -1, 1)
        ON CONFLICT DO UPDATE SET people = people + 1;
    INSERT INTO turnout_tallies (county, precinct, polling_place, hour, people)
        SELECT new.county, new.precinct, new.polling_place, v.voted_at / 3600000, 1
        FROM turnout_voted v WHERE v.person_id = new.person_id
        ON CONFLICT DO UPDATE SET people = people + 1;
END;

CREATE TRIGGER turnout_universe_delete AFTER DELETE ON gotv_universe BEGIN
    UPDATE turnout_tallies SET people = people - 1
        WHERE county = old.county AND precinct = old.precinct AND polling_place = old.polling_place AND hour = -1;
    UPDATE turnout_tallies SET people = people - 1
        WHERE county = old.county AND precinct = old.precinct AND polling_place = old.polling_place
          AND hour = (SELECT v.voted_at / 3600000 FROM turnout_voted v WHERE v.person_id = old.person_id);
END;

-- The voted state left the universe, and with it the indexes over it.
DROP INDEX gotv_universe_remaining;
DROP INDEX gotv_universe_geo;
ALTER TABLE gotv_universe DROP COLUMN live_reports;
ALTER TABLE gotv_universe DROP COLUMN voted_at;
CREATE INDEX gotv_universe_precinct ON gotv_universe (county, precinct);
