-- A batch of new donations takes its donors' locks and then reads their totals. As two
-- statements that is two round trips while the locks are held; as one plain statement
-- the read would use the snapshot taken before the locks were granted and could miss a
-- gift committed while this batch waited. A VOLATILE PL/pgSQL function takes a fresh
-- snapshot for each query it runs, so the read sees everything committed before the
-- locks were granted: one round trip, the same guarantee.
CREATE FUNCTION narwhal_lock_totals(people BIGINT[])
RETURNS TABLE (o_person BIGINT, o_period TEXT, o_total BIGINT)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- The same keys as every other path that changes totals, in a fixed order so
    -- that two batches never wait on each other in a cycle.
    PERFORM pg_advisory_xact_lock(8, hashtext(s.p::text))
    FROM (SELECT DISTINCT unnest(people) AS p ORDER BY 1) s;
    RETURN QUERY
        SELECT t.person_id, t.period, t.total_cents
        FROM contribution_totals t
        WHERE t.person_id = ANY (people);
END
$$;
