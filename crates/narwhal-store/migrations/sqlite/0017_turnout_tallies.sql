-- Election day at scale: fewer indexes to keep per report, and live tallies.
-- turnout_reports (polling_place, received_at) served no query.
DROP INDEX turnout_reports_place;
-- gotv_universe (county, precinct) is a prefix of gotv_universe_geo (county, precinct,
-- polling_place, voted_at), which serves the same lookups; on PostgreSQL every change
-- of a voter's voted time wrote an entry into it too.
DROP INDEX gotv_universe_precinct;

-- Live turnout tallies: per precinct, how many supporters the universe holds (hour -1)
-- and how many count as voted from each hour (hour = voted_at / 3600000, UTC hours since
-- the epoch). Triggers keep them in the transaction that changes gotv_universe, so the
-- live figures read a few rows per precinct instead of scanning the universe.
CREATE TABLE turnout_tallies (
    county TEXT NOT NULL,
    precinct TEXT NOT NULL,
    polling_place TEXT NOT NULL,
    hour INTEGER NOT NULL,
    people INTEGER NOT NULL,
    PRIMARY KEY (county, precinct, polling_place, hour)
) WITHOUT ROWID;
INSERT INTO turnout_tallies (county, precinct, polling_place, hour, people)
    SELECT county, precinct, polling_place, -1, COUNT(*) FROM gotv_universe
    GROUP BY county, precinct, polling_place;
INSERT INTO turnout_tallies (county, precinct, polling_place, hour, people)
    SELECT county, precinct, polling_place, voted_at / 3600000, COUNT(*) FROM gotv_universe
    WHERE voted_at IS NOT NULL GROUP BY county, precinct, polling_place, voted_at / 3600000;

CREATE TRIGGER turnout_tallies_insert AFTER INSERT ON gotv_universe BEGIN
    INSERT INTO turnout_tallies (county, precinct, polling_place, hour, people)
        VALUES (new.county, new.precinct, new.polling_place, -1, 1)
        ON CONFLICT DO UPDATE SET people = people + 1;
    INSERT INTO turnout_tallies (county, precinct, polling_place, hour, people)
        SELECT new.county, new.precinct, new.polling_place, new.voted_at / 3600000, 1 WHERE new.voted_at IS NOT NULL
        ON CONFLICT DO UPDATE SET people = people + 1;
END;

CREATE TRIGGER turnout_tallies_delete AFTER DELETE ON gotv_universe BEGIN
    UPDATE turnout_tallies SET people = people - 1
        WHERE county = old.county AND precinct = old.precinct AND polling_place = old.polling_place AND hour = -1;
    UPDATE turnout_tallies SET people = people - 1
        WHERE old.voted_at IS NOT NULL AND county = old.county AND precinct = old.precinct AND polling_place = old.polling_place AND hour = old.voted_at / 3600000;
END;

CREATE TRIGGER turnout_tallies_voted AFTER UPDATE ON gotv_universe
WHEN old.voted_at IS NOT new.voted_at OR old.county IS NOT new.county OR old.precinct IS NOT new.precinct OR old.polling_place IS NOT new.polling_place
BEGIN
    UPDATE turnout_tallies SET people = people - 1
        WHERE old.voted_at IS NOT NULL AND county = old.county AND precinct = old.precinct AND polling_place = old.polling_place AND hour = old.voted_at / 3600000;
    INSERT INTO turnout_tallies (county, precinct, polling_place, hour, people)
        SELECT new.county, new.precinct, new.polling_place, new.voted_at / 3600000, 1 WHERE new.voted_at IS NOT NULL
        ON CONFLICT DO UPDATE SET people = people + 1;
END;

CREATE TRIGGER turnout_tallies_moved AFTER UPDATE ON gotv_universe
WHEN old.county IS NOT new.county OR old.precinct IS NOT new.precinct OR old.polling_place IS NOT new.polling_place
BEGIN
    UPDATE turnout_tallies SET people = people - 1
        WHERE county = old.county AND precinct = old.precinct AND polling_place = old.polling_place AND hour = -1;
    INSERT INTO turnout_tallies (county, precinct, polling_place, hour, people)
        VALUES (new.county, new.precinct, new.polling_place, -1, 1)
        ON CONFLICT DO UPDATE SET people = people + 1;
END;
