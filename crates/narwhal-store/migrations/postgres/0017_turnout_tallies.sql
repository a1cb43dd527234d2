-- Election day at scale: fewer indexes to keep per report, and live tallies.
-- turnout_reports (polling_place, received_at) served no query.
DROP INDEX turnout_reports_place;
-- seq only numbers the supporters to make their codes, and code is unique (a
-- bijection of seq): its own unique index was one more entry per voter's update.
ALTER TABLE gotv_universe DROP CONSTRAINT gotv_universe_seq_key;
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

-- Folds the rows a statement inserted, deleted or changed into the tallies.
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
        -- Each changed row leaves its old cells and enters its new ones: -1 where it
        -- counted (its place's universe, its old voted hour), +1 where it counts now.
        INSERT INTO turnout_tallies AS t (county, precinct, polling_place, hour, people)
        SELECT x.county, x.precinct, x.polling_place, x.hour, SUM(x.n)
        FROM old_rows o JOIN new_rows w ON w.person_id = o.person_id
        CROSS JOIN LATERAL (VALUES
            (o.county, o.precinct, o.polling_place, -1::BIGINT, -1::BIGINT),
            (w.county, w.precinct, w.polling_place, -1::BIGINT, 1::BIGINT),
            (o.county, o.precinct, o.polling_place, o.voted_at / 3600000, CASE WHEN o.voted_at IS NULL THEN 0 ELSE -1 END),
            (w.county, w.precinct, w.polling_place, w.voted_at / 3600000, CASE WHEN w.voted_at IS NULL THEN 0 ELSE 1 END)
        ) AS x (county, precinct, polling_place, hour, n)
        WHERE (o.voted_at IS DISTINCT FROM w.voted_at
               OR o.county <> w.county OR o.precinct <> w.precinct OR o.polling_place <> w.polling_place)
          AND x.hour IS NOT NULL
        GROUP BY x.county, x.precinct, x.polling_place, x.hour HAVING SUM(x.n) <> 0
        ORDER BY x.county, x.precinct, x.polling_place, x.hour
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
