-- Election day at scale: fewer indexes to keep per report, and live tallies.
-- turnout_reports (polling_place, received_at) served no query.
DROP INDEX turnout_reports_place;
-- gotv_universe (county, precinct) is a prefix of gotv_universe_geo (county, precinct,
-- polling_place, voted_at), which serves the same lookups; on PostgreSQL every change
-- of a voter's voted time wrote an entry into it too.
DROP INDEX gotv_universe_precinct;

-- Live turnout tallies: per precinct, how many supporters the universe holds (hour -1)
-- and how many count as voted from each hour (hour = voted_at / 3600000, UTC hours since
-- the epoch). Statement triggers keep them in the transaction that changes
-- gotv_universe (one aggregated upsert per statement, in key order, so concurrent
-- ingests lock tally rows in one order), and the live figures read a few rows per
-- precinct instead of scanning the universe.
CREATE TABLE turnout_tallies (
    county TEXT NOT NULL,
    precinct TEXT NOT NULL,
    polling_place TEXT NOT NULL,
    hour BIGINT NOT NULL,
    people BIGINT NOT NULL,
    PRIMARY KEY (county, precinct, polling_place, hour)
);
INSERT INTO turnout_tallies (county, precinct, polling_place, hour, people)
    SELECT county, precinct, polling_place, -1, COUNT(*) FROM gotv_universe
    GROUP BY county, precinct, polling_place;
INSERT INTO turnout_tallies (county, precinct, polling_place, hour, people)
    SELECT county, precinct, polling_place, voted_at / 3600000, COUNT(*) FROM gotv_universe
    WHERE voted_at IS NOT NULL GROUP BY county, precinct, polling_place, voted_at / 3600000;

-- d: (county, precinct, polling_place, hour, change), folded into the tallies.
CREATE FUNCTION turnout_tallies_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO turnout_tallies AS t (county, precinct, polling_place, hour, people)
        SELECT county, precinct, polling_place, hour, SUM(n) FROM (
            SELECT county, precinct, polling_place, -1 AS hour, 1 AS n FROM new_rows
            UNION ALL
            SELECT county, precinct, polling_place, voted_at / 3600000, 1 FROM new_rows WHERE voted_at IS NOT NULL
        ) d GROUP BY county, precinct, polling_place, hour
        ORDER BY county, precinct, polling_place, hour
        ON CONFLICT (county, precinct, polling_place, hour) DO UPDATE SET people = t.people + excluded.people;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO turnout_tallies AS t (county, precinct, polling_place, hour, people)
        SELECT county, precinct, polling_place, hour, SUM(n) FROM (
            SELECT county, precinct, polling_place, -1 AS hour, -1 AS n FROM old_rows
            UNION ALL
            SELECT county, precinct, polling_place, voted_at / 3600000, -1 FROM old_rows WHERE voted_at IS NOT NULL
        ) d GROUP BY county, precinct, polling_place, hour
        ORDER BY county, precinct, polling_place, hour
        ON CONFLICT (county, precinct, polling_place, hour) DO UPDATE SET people = t.people + excluded.people;
    ELSE
        INSERT INTO turnout_tallies AS t (county, precinct, polling_place, hour, people)
        SELECT county, precinct, polling_place, hour, SUM(n) FROM (
            SELECT o.county, o.precinct, o.polling_place, o.voted_at / 3600000 AS hour, -1 AS n
                FROM old_rows o JOIN new_rows w ON w.person_id = o.person_id
                WHERE o.voted_at IS NOT NULL AND (o.voted_at IS DISTINCT FROM w.voted_at OR (o.county, o.precinct, o.polling_place) IS DISTINCT FROM (w.county, w.precinct, w.polling_place))
            UNION ALL
            SELECT w.county, w.precinct, w.polling_place, w.voted_at / 3600000, 1
                FROM old_rows o JOIN new_rows w ON w.person_id = o.person_id
                WHERE w.voted_at IS NOT NULL AND (o.voted_at IS DISTINCT FROM w.voted_at OR (o.county, o.precinct, o.polling_place) IS DISTINCT FROM (w.county, w.precinct, w.polling_place))
            UNION ALL
            SELECT o.county, o.precinct, o.polling_place, -1, -1
                FROM old_rows o JOIN new_rows w ON w.person_id = o.person_id
                WHERE (o.county, o.precinct, o.polling_place) IS DISTINCT FROM (w.county, w.precinct, w.polling_place)
            UNION ALL
            SELECT w.county, w.precinct, w.polling_place, -1, 1
                FROM old_rows o JOIN new_rows w ON w.person_id = o.person_id
                WHERE (o.county, o.precinct, o.polling_place) IS DISTINCT FROM (w.county, w.precinct, w.polling_place)
        ) d GROUP BY county, precinct, polling_place, hour HAVING SUM(n) <> 0
        ORDER BY county, precinct, polling_place, hour
        ON CONFLICT (county, precinct, polling_place, hour) DO UPDATE SET people = t.people + excluded.people;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER turnout_tallies_insert AFTER INSERT ON gotv_universe
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION turnout_tallies_apply();
CREATE TRIGGER turnout_tallies_update AFTER UPDATE ON gotv_universe
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION turnout_tallies_apply();
CREATE TRIGGER turnout_tallies_delete AFTER DELETE ON gotv_universe
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION turnout_tallies_apply();
