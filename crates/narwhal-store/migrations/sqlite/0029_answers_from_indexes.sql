-- PostgreSQL gets its segment counts and name searches from indexes here (the id in
-- the county and name indexes, an index on state). SQLite's index entries carry the
-- id already and it has an index on state (0018), so nothing changes on this backend.
SELECT 1;
